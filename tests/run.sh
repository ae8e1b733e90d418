#!/usr/bin/env bash
# Install everything the tests need (Debian packages, a virtual environment with the
# node and its test extras) and run the whole suite, SQLite and PostgreSQL.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

export DEBIAN_FRONTEND=noninteractive
as_root apt-get update -qq
# dcmtk: storescu/storescp and the compressors; dicom3tools: dciodvfy; orthanc: the PACS;
# chromium: renders the status page;
# postgresql: the server the suite runs against (already running on project machines).
as_root apt-get install -y -qq --no-install-recommends \
    python3-venv dcmtk dicom3tools orthanc orthanc-dicomweb chromium openssl postgresql \
    >/dev/null

if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
fi

# The OHIF viewer's built dist/ (npm @ohif/app) for the viewer test, unpacked under .cache/.
OHIF_VERSION=3.13.2
if [ ! -f .cache/ohif/package/dist/index.html ]; then
    command -v npm >/dev/null || as_root apt-get install -y -qq --no-install-recommends npm >/dev/null
    mkdir -p .cache/ohif
    (cd .cache/ohif && npm pack --silent "@ohif/app@${OHIF_VERSION}" >/dev/null \
        && tar xzf "ohif-app-${OHIF_VERSION}.tgz")
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

export MAMMO_TEST_POSTGRES_URL="${MAMMO_TEST_POSTGRES_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/postgres}"
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
