"""The README stays true: CI runs its test command, and it documents every setting."""

from __future__ import annotations

import re
from pathlib import Path

from mammo_scp.config import Settings

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def _setup_commands() -> list[str]:
    setup = README.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", setup, re.DOTALL)


def test_setup_is_two_commands_and_ci_runs_the_test_command() -> None:
    commands = _setup_commands()
    assert commands == ["bash deploy/quickstart.sh", "bash tests/run.sh"]
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == commands[1]


def test_every_setting_is_documented() -> None:
    table = README.split("| key | default | meaning |", 1)[1]
    documented = set(re.findall(r"`([a-z_0-9]+)`", table))
    missing = sorted(set(Settings.model_fields) - documented)
    assert missing == [], f"settings missing from the README's table: {missing}"
