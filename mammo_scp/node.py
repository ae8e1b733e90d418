"""Start-up and shutdown of a node process: `serve` (SCP + workers) and `work` (workers only)."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING

from mammo_scp.config import Settings
from mammo_scp.db import Database, upgrade
from mammo_scp.http import HttpStartError, NodeState, start_http
from mammo_scp.pipeline import Pipeline, default_pipeline
from mammo_scp.receive.scp import start_scp
from mammo_scp.store.ingest import ImageLimits, Ingestor
from mammo_scp.store.spool import Spool
from mammo_scp.worker import Workers

if TYPE_CHECKING:
    from mammo_scp.models.analyzer import Analyzer

logger = logging.getLogger(__name__)


def configure_logging(level: str) -> None:
    """Plain, greppable lines on stderr: time, level, logger, message (never patient data)."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        force=True,
    )
    # pynetdicom's INFO lines repeat ours; its DEBUG lines can dump datasets.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


class StartupError(Exception):
    """The node cannot start; the message says what to fix."""


def load_models(settings: Settings) -> Analyzer | None:
    """The shipped models, verified; None for a receive-only process (workers = 0)."""
    if settings.workers == 0:
        return None
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    from mammo_scp.models.analyzer import Analyzer
    from mammo_scp.models.store import ModelStoreError

    try:
        analyzer = Analyzer.load(settings.models_dir, precision=settings.inference_precision)
    except ModelStoreError as exc:
        raise StartupError(f"cannot load the models: {exc}") from exc
    started = time.perf_counter()
    warm_up(analyzer)
    logger.info("models loaded and warmed up in %.1f s: %s %s, %s %s (%s)",
                time.perf_counter() - started, analyzer.segmenter_info.name,
                analyzer.segmenter_info.version, analyzer.detector_info.name,
                analyzer.detector_info.version, settings.inference_precision)
    return analyzer


def warm_up(analyzer: Analyzer) -> None:
    """One inference on a synthetic breast, so the first study does not pay for tracing."""
    import numpy as np

    rows, cols = 1024, 832
    yy, xx = np.mgrid[0:rows, 0:cols]
    breast = ((xx / (0.8 * cols)) ** 2 + ((yy - rows / 2) / (0.45 * rows)) ** 2) <= 1.0
    pixels = np.where(breast, 150, 10).astype(np.uint8)
    analyzer.analyze_array(pixels, 0.2, laterality="R", sop_uid="warm-up")


def run(settings: Settings, *, with_scp: bool, pipeline: Pipeline | None = None,
        stop: threading.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or ``stop``); return the process exit code."""
    stop = stop or threading.Event()
    os.umask(0o077)  # spool files and the SQLite database: readable by the node's user only
    db = Database(settings.db_url)
    upgrade(db)
    spool = Spool(settings.spool)
    spool.prepare(receiving=with_scp)
    state = NodeState(settings, db, spool, models_loaded=False)
    try:
        http = start_http(state)
    except HttpStartError as exc:
        raise StartupError(str(exc)) from exc
    if pipeline is None:
        analyzer = load_models(settings)
        pipeline = default_pipeline(analyzer, cad_sr=settings.cad_sr)
    state.models_loaded = True
    workers = Workers(settings, db, spool, pipeline)
    server = None
    if with_scp:
        limits = ImageLimits(settings.min_image_side, settings.max_image_pixels)
        ingestor = Ingestor(db, spool, settings.min_free_mb, limits,
                            on_stored=workers.instances_arrived.notify)
        server = start_scp(settings, ingestor)
    workers.start()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
    logger.info("node ready (%s, database %s, spool %s)",
                "SCP + workers" if with_scp else "workers only",
                db.engine.url.render_as_string(hide_password=True), spool.root)
    stop.wait()
    if server is not None:
        server.shutdown()
    if http is not None:
        http.shutdown()
        http.server_close()
    workers.stop()
    db.dispose()
    logger.info("stopped")
    return 0
