#!/usr/bin/env bash
# Install the node into ./.venv and start it on its embedded default:
# SQLite database and local spool under ./mammo-scp-data, shipped models, port 11112.
# Extra arguments go to `mammo-scp serve` (e.g. --config node.toml).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c 'import ensurepip' 2>/dev/null; then
    if [ "$(id -u)" -eq 0 ]; then apt-get update -qq && apt-get install -y -qq python3-venv
    else sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv; fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .
exec .venv/bin/mammo-scp serve "$@"
