"""The CLI's read commands: which configuration and database they use, that they never
create a database, and that they do not load TensorFlow."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mammo_scp import cli, config

_CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("MAMMO_SCP_")}


def _mammo_scp(*args: str, cwd: Path, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mammo_scp", *args], cwd=cwd,
                          env=_CLEAN_ENV | (env or {}), capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def no_system_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Point the system-wide default at a path that does not exist (for in-process calls)."""
    absent = tmp_path / "etc" / "node.toml"
    monkeypatch.setattr(config, "SYSTEM_CONFIG", absent)
    for name in list(os.environ):
        if name.startswith("MAMMO_SCP_"):
            monkeypatch.delenv(name)
    return absent


@pytest.fixture
def node_config(tmp_path: Path) -> Path:
    """A node's configuration with its database created (``db upgrade``)."""
    path = tmp_path / "node" / "node.toml"
    path.parent.mkdir()
    path.write_text(f'data_dir = "{tmp_path / "node" / "data"}"\n')
    done = _mammo_scp("db", "upgrade", "--config", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return path


@pytest.mark.parametrize("command", [["jobs", "list"], ["jobs", "show", "1"],
                                     ["jobs", "retry", "1"], ["studies", "list"],
                                     ["preview", "1", "--out", "x.png"]])
def test_read_commands_refuse_a_missing_database_and_create_nothing(
        command: list[str], tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = _mammo_scp(*command, cwd=elsewhere)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    expected = elsewhere / "mammo-scp-data" / "mammo-scp.db"
    assert f"no node database at {expected}" in done.stderr
    for hint in ("--config", "MAMMO_SCP_CONFIG", "/etc/mammo-scp/node.toml"):
        assert hint in done.stderr, done.stderr
    assert list(elsewhere.iterdir()) == [], "a read command created files"


def test_read_commands_say_which_configuration_and_database(node_config: Path,
                                                            tmp_path: Path) -> None:
    done = _mammo_scp("jobs", "list", "--json", cwd=tmp_path,
                      env={"MAMMO_SCP_CONFIG": str(node_config)})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
    db_file = node_config.parent / "data" / "mammo-scp.db"
    assert done.stderr.strip() == (f"mammo-scp: configuration {node_config} "
                                   f"(MAMMO_SCP_CONFIG); database sqlite:///{db_file}")


def test_a_file_without_the_schema_is_refused(tmp_path: Path, no_system_config: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "node.toml"
    path.write_text(f'database_url = "sqlite:///{tmp_path / "other.db"}"\n')
    sqlite3.connect(tmp_path / "other.db").close()
    assert cli.main(["studies", "list", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "holds no mammo-scp tables" in err and "db upgrade" in err
    assert f"{path} (--config)" in err


def test_system_config_is_used_when_nothing_else_names_one(
        tmp_path: Path, no_system_config: Path, node_config: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    no_system_config.parent.mkdir()
    no_system_config.write_text(node_config.read_text())
    assert cli.main(["jobs", "list"]) == 0
    captured = capsys.readouterr()
    assert f"configuration {no_system_config} (system default)" in captured.err
    assert captured.out.startswith("ID  STATE")


def test_system_config_comes_after_option_and_variable(tmp_path: Path) -> None:
    system = tmp_path / "node.toml"
    system.write_text("port = 104\n")
    other = tmp_path / "other.toml"
    other.write_text("port = 4242\n")
    absent = tmp_path / "absent.toml"
    assert config.load_settings(environ={}, system_config=system).port == 104
    assert config.load_settings(environ={}, system_config=absent).port == 11112
    assert config.load_settings(environ={"MAMMO_SCP_CONFIG": str(other)},
                                system_config=system).port == 4242
    assert config.load_settings(other, environ={}, system_config=system).port == 4242


def test_jobs_list_does_not_import_tensorflow(node_config: Path, tmp_path: Path) -> None:
    """The read commands answer fast because they import neither TensorFlow nor the DICOM
    and migration libraries (timings: benchmarks/cli.py)."""
    heavy = ["tensorflow", "keras", "pydicom", "pynetdicom", "highdicom", "alembic"]
    probe = (
        "import sys\n"
        "from mammo_scp.cli import main\n"
        f"code = main(['jobs', 'list', '--config', {str(node_config)!r}])\n"
        f"loaded = [m for m in {heavy!r} if m in sys.modules]\n"
        "print('LOADED', loaded, 'CODE', code)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=_CLEAN_ENV,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "LOADED [] CODE 0" in done.stdout, done.stdout
