"""A job thread that dies anyway (a SystemExit raised inside it, past every boundary) is
replaced, and the job it held goes back to the queue at once (issue 25)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pydicom.uid import generate_uid

from mammo_scp.dicom import StoreStatus
from mammo_scp.jobs.states import JobState
from mammo_scp.pipeline import JobContext
from tests.integration.test_bad_input import send
from tests.support import inprocess
from tests.support.inprocess import InProcessNode
from tests.support.mg import make_mg
from tests.support.peers import wait_for


def test_a_dead_job_thread_is_replaced_and_its_job_re_queued(
    make_node: Callable[..., InProcessNode], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[int] = []
    derive = inprocess.derived_copies

    def dies_once(ctx: JobContext) -> str:
        runs.append(ctx.job_id)
        if len(runs) == 1:
            raise SystemExit("a library called sys.exit() in the worker thread")
        return derive(ctx)

    monkeypatch.setattr(inprocess, "derived_copies", dies_once)
    node = make_node(None, quiet_period_s=0.5, job_lease_s=600)  # no help from lease expiry
    assert send(node.settings.port, make_mg("R", "CC", study_uid=generate_uid())) \
        == StoreStatus.SUCCESS
    wait_for(lambda: node.jobs() and node.jobs()[0].state == JobState.DONE, 30,
             what="the job to be re-run by a new thread and done")
    assert runs == [runs[0], runs[0]]
    assert "thread job-0 died holding job" in caplog.text
    # and the new thread takes the next study too
    assert send(node.settings.port, make_mg("L", "CC", study_uid=generate_uid())) \
        == StoreStatus.SUCCESS
    wait_for(lambda: len(node.jobs()) == 2 and node.jobs()[1].state == JobState.DONE, 30,
             what="the next study's job to be done")
