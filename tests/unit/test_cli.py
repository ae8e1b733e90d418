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
    and database libraries beyond the driver (timings: benchmarks/cli.py)."""
    heavy = ["tensorflow", "keras", "pydicom", "pynetdicom", "highdicom", "alembic",
             "sqlalchemy"]
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


def test_the_reader_reports_what_the_orm_wrote(db) -> None:  # type: ignore[no-untyped-def]
    """jobs list/show and studies list read the tables with the driver alone: the same
    values as through the ORM, on SQLite and PostgreSQL."""
    import sqlalchemy as sa

    from mammo_scp.completion import queue_ready_studies
    from mammo_scp.jobs.models import Delivery, Instance, Job, Result, Study, utcnow
    from mammo_scp.jobs.report import Reader
    from mammo_scp.jobs.service import transition
    from mammo_scp.jobs.states import DeliveryState, JobState

    now = utcnow()
    with db.session() as session:
        for n, views in enumerate([("RCC", "LCC", "RMLO", "LMLO"), ("RCC",)]):
            study = Study(study_uid=f"1.2.826.0.9.{n}", first_received_at=now,
                          last_received_at=now)
            session.add(study)
            session.flush()
            for v, label in enumerate(views):
                session.add(Instance(
                    sop_instance_uid=f"1.2.826.0.9.{n}.{v}",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.1.2", series_uid="1.2.826.0.9",
                    study_id=study.id, transfer_syntax="1.2.840.10008.1.2.1",
                    laterality=label[0], view=label[1:], path=f"x/{n}{v}.dcm", size_bytes=1,
                    calling_ae="T", received_at=now))
    (job_id,) = queue_ready_studies(db, quiet_period_s=30)
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        transition(session, job, JobState.RUNNING, "claimed", "w1")
        transition(session, job, JobState.DELIVERING, "1 object(s) to 1 destination(s)")
        result = Result(job_id=job_id, sop_instance_uid="1.2.826.0.9.99",
                        sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4", kind="SEG",
                        path="results/1/x.dcm")
        session.add(result)
        session.flush()
        session.add(Delivery(job_id=job_id, result_id=result.id, destination="pacs",
                             state=DeliveryState.PENDING, next_attempt_at=now,
                             last_error="refused"))

    reader = Reader(db.url)
    try:
        listed, shown, studies = reader.jobs(), reader.job(job_id), reader.studies()
        assert reader.jobs("done") == [] and reader.job(job_id + 1) is None
    finally:
        reader.close()
    with db.read_session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        stamp = job.updated_at.isoformat(timespec="seconds") + "Z"
        events = [(e.from_state, e.to_state) for e in job.events]
        waiting = session.scalar(sa.select(sa.func.count()).select_from(Instance)
                                 .where(Instance.job_id.is_(None)))
    assert listed == [{"id": job_id, "study_uid": "1.2.826.0.9.0", "state": "delivering",
                       "trigger": "four_views", "instances": 4, "attempts": 0,
                       "deliveries": {"pending": 1}, "created_at": listed[0]["created_at"],
                       "updated_at": stamp, "error": None}]
    assert shown is not None
    assert [i["laterality"] + i["view"] for i in shown["instances"]] == ["RCC", "LCC", "RMLO",
                                                                         "LMLO"]
    assert [t["change"] for t in shown["timeline"]] == [
        f"{a or '-'} -> {b}" for a, b in events]
    assert shown["timeline"][-1]["change"] == "running -> delivering"
    assert shown["results"] == [{"sop_instance_uid": "1.2.826.0.9.99", "kind": "SEG",
                                 "path": "results/1/x.dcm"}]
    assert shown["deliveries"] == [{"destination": "pacs", "object": "1.2.826.0.9.99",
                                    "state": "pending", "attempts": 0,
                                    "next_attempt_at": now.isoformat(timespec="seconds") + "Z",
                                    "last_error": "refused", "commitment": None}]
    assert [(s["study_uid"], s["instances"], s["waiting"], s["jobs"]) for s in studies] == [
        ("1.2.826.0.9.0", 4, 0, f"{job_id}:delivering"), ("1.2.826.0.9.1", 1, 1, None)]
    assert waiting == 1
