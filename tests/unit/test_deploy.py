"""deploy/ (compose, Kubernetes, systemd, Orthanc routing) agrees with the code: commands,
config keys, environment names and ports. No container engine runs here; see deploy/README."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_deployment_files_match_the_code() -> None:
    done = subprocess.run([sys.executable, str(REPO / "deploy" / "check_deploy.py")],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "deploy/ agrees with the code" in done.stdout
