"""Fuzz past the headers (issue 25): a seeded corpus of studies mixing good and bad images
(tests.support.corpus) sent over real associations to a node that decodes, preprocesses
and encodes for real, with stand-in networks (tests.support.stub_analyzer).

Asserted: every C-STORE is answered with a status the README names; no traceback in the
log; every acknowledged study ends done or skipped (none failed, none unfinished); every
good image is processed and every study with one has results; the result objects pass
dciodvfy; C-ECHO still answers; a normal study sent afterwards is done within a minute.

``MAMMO_FUZZ_STUDIES`` sets the corpus size (default 50 studies, ~300 inputs: about a
minute on 2 cores); ``benchmarks/fuzz_pixels.py`` runs longer ones.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydicom.uid import generate_uid
from pynetdicom import AE

from mammo_scp.config import Settings
from mammo_scp.db import Database
from mammo_scp.dicom import StoreStatus
from mammo_scp.jobs.models import Instance, Job, Result, Study
from mammo_scp.jobs.states import InstanceStatus, JobState
from mammo_scp.node import run
from mammo_scp.pipeline import default_pipeline
from tests.support.corpus import SYNTAXES, Input, build_corpus
from tests.support.dciodvfy import run_dciodvfy
from tests.support.inprocess import AET
from tests.support.mg import MG_FOR_PRESENTATION, make_mg
from tests.support.peers import echo_ok, free_port, send_file_as_is, wait_for
from tests.support.stub_analyzer import StubAnalyzer

SEED = int(os.environ.get("MAMMO_FUZZ_SEED", "25"))
STUDIES = int(os.environ.get("MAMMO_FUZZ_STUDIES", "50"))
PER_ASSOCIATION = 20
FINAL = (JobState.DONE, JobState.SKIPPED)


class Node:
    """The node in this process (SCP + workers), on SQLite, with the stub analyzer."""

    def __init__(self, root: Path) -> None:
        self.settings = Settings.model_validate({
            "port": free_port(), "bind_address": "127.0.0.1", "data_dir": root / "data",
            "database_url": f"sqlite:///{root / 'node.db'}", "quiet_period_s": 1.0,
            "poll_interval_s": 0.2, "min_free_mb": 1, "http_port": 0, "workers": 1,
            "min_image_side": 32, "cad_sr": True})
        self.stop = threading.Event()
        pipeline = default_pipeline(StubAnalyzer(), cad_sr=True)
        self.thread = threading.Thread(target=run, args=(self.settings,), daemon=True,
                                       kwargs={"with_scp": True, "pipeline": pipeline,
                                               "stop": self.stop})
        self.db = Database(self.settings.db_url)

    def jobs(self) -> list[Job]:
        with self.db.session() as session:
            return list(session.scalars(sa.select(Job).order_by(Job.id)))


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    saved = tempfile.tempdir
    started = Node(tmp_path)
    started.thread.start()
    wait_for(lambda: echo_ok(started.settings.port, AET, 1.0), 30, what="the node to listen")
    yield started
    started.stop.set()
    started.thread.join(30)
    started.db.dispose()
    tempfile.tempdir = saved


def send_all(port: int, inputs: list[Input]) -> dict[str, int]:
    """Send the files, PER_ASSOCIATION per association; SOP Instance UID -> status."""
    statuses: dict[str, int] = {}
    for start in range(0, len(inputs), PER_ASSOCIATION):
        ae = AE(ae_title="FUZZER")
        for syntax in SYNTAXES:
            ae.add_requested_context(MG_FOR_PRESENTATION, str(syntax))
        assoc = ae.associate("127.0.0.1", port, ae_title=AET)
        assert assoc.is_established, "the node stopped accepting associations"
        for item in inputs[start:start + PER_ASSOCIATION]:
            status = send_file_as_is(assoc, item.path)
            statuses[item.sop_uid] = int(status.Status) if status and "Status" in status else -1
            if not assoc.is_established:
                break
        if assoc.is_established:
            assoc.release()
    return statuses


def test_a_corpus_of_bad_images_costs_no_study_worker_or_queue(
        node: Node, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    corpus = build_corpus(tmp_path / "corpus", seed=SEED, studies=STUDIES)
    inputs = [item for study in corpus for item in study.inputs]
    started = time.monotonic()
    statuses = send_all(node.settings.port, inputs)
    named = {int(s) for s in StoreStatus}
    counts = Counter(statuses.values())
    assert len(statuses) == len(inputs), "a C-STORE went unanswered"
    assert set(counts) <= named, f"statuses the README does not name: {counts}"
    stored = {uid for uid, status in statuses.items() if status == StoreStatus.SUCCESS}
    for item in inputs:
        if item.good:
            assert item.sop_uid in stored, f"a good image was refused: {item.what}"

    def all_final() -> bool:
        jobs = node.jobs()
        with node.db.session() as session:
            untaken = session.scalar(sa.select(sa.func.count()).select_from(Instance)
                                     .where(Instance.job_id.is_(None)))
        return untaken == 0 and bool(jobs) and all(j.state in FINAL for j in jobs)

    wait_for(all_final, 300, interval=0.5, what="every job to end done or skipped")
    processed_s = time.monotonic() - started

    with node.db.session() as session:
        instance_status = {uid: status for uid, status in session.execute(
            sa.select(Instance.sop_instance_uid, Instance.status))}
        reasons = Counter(str(r).split(":")[0] for r in session.scalars(
            sa.select(Instance.skip_reason).where(Instance.skip_reason.is_not(None))))
        results_by_study = {uid: count for uid, count in session.execute(
            sa.select(Study.study_uid, sa.func.count(Result.id))
            .join(Job, Job.study_id == Study.id).join(Result, Result.job_id == Job.id)
            .group_by(Study.study_uid))}
        result_paths = list(session.scalars(sa.select(Result.path)))
    for study in corpus:
        if study.has_good:
            assert results_by_study.get(study.uid, 0) > 0, "a study with good images has no results"
        for item in study.inputs:
            if item.good:
                assert instance_status[item.sop_uid] == InstanceStatus.PROCESSED, item.what

    text = caplog.text
    assert "Traceback" not in text
    assert not [r for r in caplog.records if r.exc_info], "an exception was logged"
    assert "died" not in text, "a worker thread died"

    # every result object is valid DICOM: a sample of them, through dciodvfy
    spool = node.settings.spool
    for result_path in result_paths[::max(1, len(result_paths) // 25)]:
        verdict = run_dciodvfy(spool / result_path)
        assert verdict.errors == (), (result_path, verdict.errors)

    assert echo_ok(node.settings.port, AET)
    # the queue still moves: a normal study, sent now, is done within a minute
    study_uid = generate_uid()
    normal = []
    for k, (lat, view) in enumerate((("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))):
        ds = make_mg(lat, view, study_uid=study_uid, instance_number=k + 1)
        path = tmp_path / f"normal-{k}.dcm"
        ds.save_as(path, enforce_file_format=True)
        normal.append(Input(path, str(ds.SOPInstanceUID), True, "normal"))
    sent_at = time.monotonic()
    assert set(send_all(node.settings.port, normal).values()) == {StoreStatus.SUCCESS}

    def normal_done() -> bool:
        with node.db.session() as session:
            states = session.scalars(sa.select(Job.state).join(Study)
                                     .where(Study.study_uid == study_uid)).all()
        return bool(states) and all(s == JobState.DONE for s in states)

    wait_for(normal_done, 60, what="a normal study after the corpus to be done")
    print(f"\nfuzz corpus: {len(corpus)} studies, {len(inputs)} inputs, seed {SEED}; "
          f"statuses {dict(sorted((f'0x{k:04X}', v) for k, v in counts.items()))}; "
          f"{sum(1 for s in instance_status.values() if s == InstanceStatus.PROCESSED)} "
          f"processed, skip reasons {dict(reasons.most_common(8))}; "
          f"sent and processed in {processed_s:.0f} s; normal study after it: "
          f"{time.monotonic() - sent_at:.1f} s")
