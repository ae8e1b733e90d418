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
                       "updated_at": stamp, "error": None, "assessment": None}]
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


def _jobs(db, n: int) -> list[int]:  # type: ignore[no-untyped-def]
    """``n`` queued jobs of four-view studies."""
    from mammo_scp.completion import queue_ready_studies
    from mammo_scp.jobs.models import Instance, Study, utcnow

    now = utcnow()
    with db.session() as session:
        for k in range(n):
            study = Study(study_uid=f"1.2.826.0.8.{k}", first_received_at=now,
                          last_received_at=now)
            session.add(study)
            session.flush()
            for v, label in enumerate(("RCC", "LCC", "RMLO", "LMLO")):
                session.add(Instance(
                    sop_instance_uid=f"1.2.826.0.8.{k}.{v}",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.1.2", series_uid="1.2.826.0.8",
                    study_id=study.id, transfer_syntax="1.2.840.10008.1.2.1",
                    laterality=label[0], view=label[1:], path=f"x/{k}{v}.dcm", size_bytes=1,
                    calling_ae="T", received_at=now))
    return sorted(queue_ready_studies(db, quiet_period_s=30))


def test_jobs_list_and_show_carry_the_assessment_and_sort_by_it(
        db, tmp_path: Path, no_system_config: Path,  # type: ignore[no-untyped-def]
        capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 26: a worklist or a script sorts the jobs by exam score, read from the
    assessments table (not from the findings files), on SQLite and PostgreSQL."""
    from mammo_scp.assessment import StudyAssessment, Thresholds, assess
    from mammo_scp.jobs.report import Reader
    from mammo_scp.jobs.service import record_assessment

    thresholds = Thresholds(low=0.1, elevated=0.3)
    first, second, third, unassessed = _jobs(db, 4)
    assessed = {first: assess([("R", 0.2), ("L", 0.05)], thresholds),
                second: assess([("R", 0.02), ("L", 0.61)], thresholds),
                third: assess([("L", 0.04)], thresholds)}
    with db.session() as session:
        for job_id, assessment in assessed.items():
            record_assessment(session, job_id, assessment)
    with db.session() as session:  # a re-run replaces the row
        record_assessment(session, first, assess([("R", 0.25), ("L", 0.05)],
                                                             thresholds))
    assessed[first] = assess([("R", 0.25), ("L", 0.05)], thresholds)

    reader = Reader(db.url)
    try:
        by_id, by_score = reader.jobs(), reader.jobs(sort="score")
        shown = reader.job(second)
    finally:
        reader.close()
    assert [row["id"] for row in by_id] == [first, second, third, unassessed]
    assert [row["id"] for row in by_score] == [second, first, third, unassessed]
    for row in by_id:
        expected = assessed.get(row["id"])
        assert row["assessment"] == (expected.to_json() if expected else None)
    assert shown is not None and StudyAssessment.from_json(shown["assessment"]) == \
        assessed[second]
    assert shown["assessment"]["right"] == {"score": 0.02, "category": "low"}

    config = tmp_path / "node.toml"
    config.write_text(f'database_url = "{db.url}"\n')
    assert cli.main(["jobs", "list", "--sort", "score", "--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["ID", "STATE", "TRIGGER", "INSTANCES", "EXAM"]
    assert [line.split()[0] for line in lines[1:]] == [str(j) for j in
                                                      (second, first, third, unassessed)]
    assert lines[1].split()[3:6] == ["4", "elevated", "61%"]
    assert cli.main(["jobs", "show", str(second), "--config", str(config)]) == 0
    assert ("assessment: exam elevated (61%); right low (2%), left elevated (61%) "
            "(low < 10.0% <= intermediate < 30.0% <= elevated)") in capsys.readouterr().out
    assert cli.main(["jobs", "list", "--json", "--sort", "score", "--config",
                     str(config)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[0]["assessment"]["exam"] == {"score": 0.61, "category": "elevated"}

    with db.session() as session:  # a re-run without any analysed image has none
        record_assessment(session, third, None)
    reader = Reader(db.url)
    try:
        assert [row["assessment"] is None for row in reader.jobs()] == [
            False, False, True, True]
    finally:
        reader.close()


def _evaluation(path: Path, version: str = "2.0.0", look: str = "film") -> Path:
    """An evaluation.json of ten women: a mass in the right breast of the first five,
    scoring 0.1 ... 0.5; every normal breast scores below 0.1."""
    images = []
    for k in range(10):
        right = 0.1 * (k + 1) if k < 5 else 0.005 * k
        for laterality, score, mass in (("R", right, k < 5), ("L", 0.01 * k, False)):
            images.append({"key": f"m{k}{laterality}", "woman": f"w{k}",
                           "laterality": laterality, "mass": mass, "malignant": False,
                           "mass_score": score, "malignancy_score": 0.0,
                           "findings": int(score >= 0.3), "mask": False})
    path.write_text(json.dumps({"scope": "validation women of the manifest split",
                                "look": look, "precision": "fp32",
                                "models": {"unet": "1.2.0", "frcnn": version},
                                "images": images}))
    return path


def test_assessment_chooses_and_writes_assessment_low(
        tmp_path: Path, no_system_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Mass breasts score 0.1 ... 0.5: nine in ten at or above it makes 0.1 (of five
    breasts, the fifth highest). Writing it keeps the manifest's other thresholds and the weights'
    hash, so the store still loads the model."""
    import numpy as np

    from mammo_scp.models.store import load_model, save_model

    models = tmp_path / "models"
    folder = save_model(models, "frcnn", "2.0.0", [np.ones((2, 2), np.float32)],
                        {"thresholds": {"finding_score": 0.3, "fusion_iou": 0.3}})
    evaluation = _evaluation(tmp_path / "evaluation.json")
    assert cli.main(["assessment", "--evaluation", str(evaluation), "--model",
                     str(folder)]) == 0
    out = capsys.readouterr().out
    assert "assessment_low = 0.1:" in out
    assert "| mass breasts | 5 | 0 (0 %) | 2 (40 %) | 3 (60 %) |" in out
    assert "| normal breasts | 15 | 15 (100 %) | 0 (0 %) | 0 (0 %) |" in out
    assert "| normal exams | 5 | 5 (100 %) | 0 (0 %) | 0 (0 %) |" in out
    assert "assessment_low" not in json.loads((folder / "manifest.json").read_text())[
        "thresholds"]

    assert cli.main(["assessment", "--evaluation", str(evaluation), "--write-manifest",
                     str(folder)]) == 0
    assert f"wrote assessment_low = 0.1 into {folder / 'manifest.json'}" in \
        capsys.readouterr().out
    thresholds = load_model(models, "frcnn", "2.0.0").thresholds  # sha256 still checked
    assert thresholds == {"finding_score": 0.3, "fusion_iou": 0.3, "assessment_low": 0.1}

    other = _evaluation(tmp_path / "other.json", version="2.1.0")
    assert cli.main(["assessment", "--evaluation", str(other), "--model", str(folder)]) == 1
    assert "evaluated frcnn 2.1.0" in capsys.readouterr().err
    digital = _evaluation(tmp_path / "digital.json", look="digital")
    assert cli.main(["assessment", "--evaluation", str(digital), "--write-manifest",
                     str(folder)]) == 1
    assert "the rule takes an evaluation of the validation split on film" in \
        capsys.readouterr().err
