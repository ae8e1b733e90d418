"""Start-up and shutdown of a node process: `serve` (SCP + workers) and `work` (workers only)."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from mammo_scp.config import Settings
from mammo_scp.db import Database, upgrade
from mammo_scp.pipeline import Pipeline, default_pipeline
from mammo_scp.receive.scp import start_scp
from mammo_scp.store.ingest import Ingestor
from mammo_scp.store.spool import Spool
from mammo_scp.worker import Workers

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


def run(settings: Settings, *, with_scp: bool, pipeline: Pipeline | None = None,
        stop: threading.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or ``stop``); return the process exit code."""
    stop = stop or threading.Event()
    db = Database(settings.db_url)
    upgrade(db)
    spool = Spool(settings.spool)
    spool.prepare()
    workers = Workers(settings, db, spool, pipeline or default_pipeline())
    server = None
    if with_scp:
        server = start_scp(settings, Ingestor(db, spool, settings.min_free_mb))
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
    workers.stop()
    db.dispose()
    logger.info("stopped")
    return 0
