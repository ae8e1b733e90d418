"""The node inside the test process (`mammo_scp.node.run` in a thread), with a stand-in
encoder stage so delivery can be tested without the models."""

from __future__ import annotations

import copy
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydicom.uid import generate_uid

from mammo_scp.config import Settings
from mammo_scp.db import Database
from mammo_scp.jobs.models import Delivery, Job
from mammo_scp.node import run
from mammo_scp.pipeline import JobContext, Pipeline, ResultObject, Stage, default_pipeline
from tests.support.peers import echo_ok, free_port, wait_for

AET = "MAMMO_SCP"


def derived_copies(ctx: JobContext) -> str:
    """A stand-in for the encoders: one derived object per processed image, UIDs
    derived from the source so that a re-run produces the same objects."""
    for uid, ds in ctx.datasets.items():
        out = copy.deepcopy(ds)
        out.SOPInstanceUID = generate_uid(entropy_srcs=[uid, "result"])
        out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
        out.SeriesInstanceUID = generate_uid(entropy_srcs=[ctx.study_uid, "result-series"])
        out.SeriesDescription = "test result"
        ctx.results.append(ResultObject("TEST", out))
    return f"{len(ctx.results)} object(s)"


class InProcessNode:
    def __init__(self, settings: Settings, pipeline: Pipeline | None = None) -> None:
        self.settings = settings
        self.stop = threading.Event()
        if pipeline is None:
            pipeline = Pipeline(default_pipeline().stages + (Stage("derive", derived_copies),))
        self.thread = threading.Thread(
            target=run, args=(settings,), kwargs={"with_scp": True, "pipeline": pipeline,
                                                  "stop": self.stop}, daemon=True)
        self.db = Database(settings.db_url)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.settings.http_port}"

    def jobs(self) -> list[Job]:
        with self.db.session() as session:
            return list(session.scalars(sa.select(Job).order_by(Job.id)))

    def deliveries(self) -> list[Delivery]:
        with self.db.session() as session:
            return list(session.scalars(sa.select(Delivery).order_by(Delivery.id)))


def node_factory(tmp_path: Path, database_url: str
                 ) -> Iterator[Callable[..., InProcessNode]]:
    """Yield a function that starts in-process nodes; all are stopped afterwards."""
    nodes: list[InProcessNode] = []
    saved_tempdir = tempfile.tempdir

    def factory(pacs_port: int | None, pipeline: Pipeline | None = None,
                **overrides: Any) -> InProcessNode:
        values = {
            "port": free_port(), "bind_address": "127.0.0.1", "data_dir": tmp_path / "data",
            "database_url": database_url, "quiet_period_s": 2.0, "poll_interval_s": 0.2,
            "min_free_mb": 1, "delivery_backoff_s": 0.5, "delivery_backoff_max_s": 2.0,
            "http_bind_address": "127.0.0.1", "http_port": free_port(),
            "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                              "port": pacs_port}] if pacs_port else [],
        } | overrides
        node = InProcessNode(Settings.model_validate(values), pipeline)
        node.thread.start()
        wait_for(lambda: echo_ok(node.settings.port, AET, 1.0), 30, what="the node to listen")
        nodes.append(node)
        return node

    yield factory
    for node in nodes:
        node.stop.set()
        node.thread.join(30)
        node.db.dispose()
    tempfile.tempdir = saved_tempdir
