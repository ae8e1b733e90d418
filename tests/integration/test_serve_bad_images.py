"""Issue 25 with the real node: `mammo-scp serve`, its worker process and the shipped
models. An RLE image that makes the native decoder panic, with four good views and a flat
grey image in its study, costs that image only: the study is processed, the worker lives,
the next study is processed, and the log holds no traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import sqlalchemy as sa
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from mammo_scp.db import Database
from mammo_scp.jobs.models import Instance, Job
from mammo_scp.jobs.states import InstanceStatus, JobState
from tests.support.mg import FOUR_VIEWS, MG_FOR_PRESENTATION, make_mg
from tests.support.peers import NodeProcess, echo_ok, free_port, wait_for, write_config
from tests.unit.test_decode import panicking_rle

AET = "MAMMO_SCP"


def _send(port: int, datasets: list[Dataset]) -> list[int]:
    ae = AE(ae_title="TESTSCU")
    for ds in datasets:
        ae.add_requested_context(MG_FOR_PRESENTATION, str(ds.file_meta.TransferSyntaxUID))
    assoc = ae.associate("127.0.0.1", port, ae_title=AET)
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets]
    assoc.release()
    return statuses


def test_a_panicking_decoder_costs_one_image_not_the_worker(tmp_path: Path) -> None:
    port = free_port()
    url = f"sqlite:///{tmp_path / 'node.db'}"
    config = write_config(tmp_path / "node.toml", {
        "port": port, "bind_address": "127.0.0.1", "data_dir": str(tmp_path / "data"),
        "database_url": url, "quiet_period_s": 2.0, "poll_interval_s": 0.2, "min_free_mb": 1,
        "cad_sr": True})
    node = NodeProcess("serve", config, tmp_path / "serve.log").start()
    db = Database(url)
    try:
        node.wait_listening(port, AET, timeout=300)
        study_uid = generate_uid()
        good = [make_mg(lat, view, study_uid=study_uid, instance_number=k, seed=k)
                for k, (lat, view) in enumerate(FOUR_VIEWS, start=1)]
        panic = panicking_rle()
        panic.StudyInstanceUID = study_uid
        flat = make_mg("R", "CC", study_uid=study_uid, instance_number=9, spacing_mm=0.1,
                       pixels=np.full((425, 266), 2048, np.uint16))
        assert _send(port, [panic, flat, *good]) == [0] * 6

        def jobs() -> list[Job]:
            with db.session() as session:
                return list(session.scalars(sa.select(Job).order_by(Job.id)))

        wait_for(lambda: jobs() and all(j.state == JobState.DONE for j in jobs()), 240,
                 what="the study's job to be done")
        with db.session() as session:
            rows = {i.sop_instance_uid: i for i in session.scalars(sa.select(Instance))}
        assert rows[str(panic.SOPInstanceUID)].status == InstanceStatus.SKIPPED
        assert "PanicException" in (rows[str(panic.SOPInstanceUID)].skip_reason or "")
        for ds in [flat, *good]:
            assert rows[str(ds.SOPInstanceUID)].status == InstanceStatus.PROCESSED

        # the worker lives: the next study is processed too
        second = [make_mg(lat, view, study_uid=generate_uid(), instance_number=k, seed=k)
                  for k, (lat, view) in enumerate(FOUR_VIEWS[:1], start=1)]
        assert _send(port, second) == [0]
        wait_for(lambda: len(jobs()) == 2 and jobs()[1].state == JobState.DONE, 120,
                 what="the next study's job to be done")
        assert echo_ok(port, AET)
        log = node.output()
        assert "Traceback" not in log and "Exception in thread" not in log, log[-3000:]
        assert "panicked" not in log  # the decoder's own report stays out of the log
    finally:
        assert node.stop() == 0, node.output()[-3000:]
        db.dispose()
