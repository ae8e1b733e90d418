"""Start-up and shutdown of a node process: `serve` (SCP + workers) and `work` (workers only)."""

from __future__ import annotations

import ctypes
import gc
import logging
import multiprocessing
import multiprocessing.process
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from multiprocessing.connection import Connection
from types import FrameType
from typing import TYPE_CHECKING

from mammo_scp.assessment import Thresholds, detector_thresholds
from mammo_scp.config import Settings
from mammo_scp.db import Database, upgrade
from mammo_scp.http import HttpStartError, NodeState, start_http
from mammo_scp.metrics import forget_children_metrics, share_metrics_with_children
from mammo_scp.pipeline import Pipeline, default_pipeline
from mammo_scp.prefetch import Prefetcher
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
    # pynetdicom's INFO lines repeat ours; its DEBUG lines can dump datasets. highdicom's
    # narrate each attribute module it copies (~30 lines a study, most of a node's log).
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    # pydicom warns about every invalid value it reads, quoting it (a patient's name or
    # birth date): the node skips or cleans such values itself and says so without them.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom\.")


class StartupError(Exception):
    """The node cannot start; the message says what to fix."""


def load_models(settings: Settings) -> Analyzer | None:
    """The shipped models, verified; None for a receive-only process (workers = 0)."""
    if settings.workers == 0:
        return None
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    from mammo_scp.models.analyzer import Analyzer
    from mammo_scp.models.store import ModelStoreError
    from mammo_scp.warmup import warm_up

    try:
        analyzer = Analyzer.load(settings.models_dir, precision=settings.inference_precision,
                                 finding_threshold=settings.finding_threshold,
                                 mask_mode=None if settings.mask_mode == "model"
                                 else settings.mask_mode,
                                 exclude_pectoral=settings.exclude_pectoral)
    except ModelStoreError as exc:
        raise StartupError(f"cannot load the models: {exc}") from exc
    started = time.perf_counter()
    warm_up(analyzer)  # the first study then runs as fast as the rest
    logger.info("models loaded and warmed up in %.1f s: %s %s, %s %s (%s, %s); finding "
                "threshold %.3f (%s), mask mode %s (%s), pectoral muscle %s (%s)",
                time.perf_counter() - started, analyzer.segmenter_info.name,
                analyzer.segmenter_info.version, analyzer.detector_info.name,
                analyzer.detector_info.version, analyzer.precision, analyzer.precision_reason,
                analyzer.score_threshold,
                "the detector's" if settings.finding_threshold is None else "configured",
                analyzer.mask_mode,
                "the segmenter's" if settings.mask_mode == "model" else "configured",
                "excluded" if analyzer.exclude_pectoral else "not excluded",
                "the detector's" if settings.exclude_pectoral is None else "configured")
    return analyzer


def assessment_thresholds(analyzer: Analyzer | None, settings: Settings) -> Thresholds | None:
    """The breast and exam assessment's thresholds: the detector's finding threshold, and
    ``assessment_low`` from the settings, else from the detector's manifest."""
    if analyzer is None:
        return None
    try:
        return detector_thresholds(analyzer.score_threshold, analyzer.frcnn_bundle.thresholds,
                                   settings.assessment_low)
    except ValueError as exc:
        raise StartupError(f"{exc}: set assessment_low lower, or leave it out to use the "
                           f"detector's") from exc


def run(settings: Settings, *, with_scp: bool, pipeline: Pipeline | None = None,
        stop: threading.Event | None = None, parent: ParentLink | None = None) -> int:
    """Run until SIGTERM/SIGINT (or ``stop``); return the process exit code.

    ``serve`` with the shipped models runs its workers in a child process
    (:class:`WorkerProcess`) unless ``worker_process`` is off; ``parent`` is that
    child's link back to the ``serve`` process that started it.
    """
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
    workers: Workers | None = None
    child: WorkerProcess | None = None
    if with_scp and pipeline is None and settings.worker_process and settings.workers > 0:
        child = WorkerProcess(settings, state)
        child.start()
        child.wait_ready()  # a missing or corrupt model stops serve here, as in one process
        instances_arrived = child.notify
    else:
        prefetcher = None
        if pipeline is None:
            analyzer = load_models(settings)
            if analyzer is not None and (with_scp or parent is not None):
                prefetcher = Prefetcher(analyzer)  # only where arrivals are heard: not `work`
            pipeline = default_pipeline(analyzer, cad_sr=settings.cad_sr, gsps=settings.gsps,
                                        prefetcher=prefetcher,
                                        assessment=assessment_thresholds(analyzer, settings))
        state.models_loaded = True
        workers = Workers(settings, db, spool, pipeline, prefetcher=prefetcher)
        instances_arrived = workers.instances_arrived.notify
    server = None
    if with_scp:
        limits = ImageLimits(settings.min_image_side, settings.max_image_pixels)
        ingestor = Ingestor(db, spool, settings.min_free_mb, limits, on_stored=instances_arrived)
        server = start_scp(settings, ingestor)
    if workers is not None:
        workers.start()
    if parent is not None and workers is not None:
        _follow_parent(parent, workers, stop)

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
    if child is not None:
        role = f"SCP, workers in process {child.pid}"
    else:
        role = "SCP + workers" if with_scp else "workers only"
    _freeze_startup_objects()
    logger.info("node ready (%s, database %s, spool %s)", role,
                db.engine.url.render_as_string(hide_password=True), spool.root)
    while not stop.wait(1.0):
        if child is not None:
            child.supervise()
        if workers is not None:
            workers.supervise()
    if server is not None:
        server.shutdown()
    if http is not None:
        http.shutdown()
        http.server_close()
    if child is not None:
        child.stop()
    if workers is not None:
        workers.stop()
    db.dispose()
    logger.info("stopped")
    return 0


@dataclass(frozen=True)
class ParentLink:
    """The worker child's two pipes to ``serve`` (wake-ups in, status out) and its pid."""

    wake: Connection
    status: Connection
    pid: int


def _follow_parent(parent: ParentLink, workers: Workers, stop: threading.Event) -> None:
    """In the child: tell ``serve`` the models are ready, then wake housekeeping for each
    "instances arrived" from it; stop when it is gone (its end of the pipe closes)."""
    parent.status.send_bytes(READY)

    def _listen() -> None:
        try:
            while parent.wake.recv_bytes():
                workers.instances_arrived.notify()
        except (EOFError, OSError):
            logger.warning("the serve process is gone; stopping the workers")
            stop.set()

    threading.Thread(target=_listen, name="from-serve", daemon=True).start()


READY = b"ready"
FAILED = b"failed: "  # followed by why, from the child that cannot start
ARRIVED = b"+"


class WorkerProcess:
    """The job workers, delivery and housekeeping of ``serve`` in a child process.

    The models' CPU work (and its Python, which holds the GIL) then never delays the
    SCP: the child runs at a lower CPU priority (``worker_nice``), dies with its parent
    (even on ``kill -9``) and is restarted if it dies alone. C-STORE wakes it through a
    pipe, without waiting on it.
    """

    RESTART_BACKOFF_S = (1.0, 5.0, 30.0)

    def __init__(self, settings: Settings, state: NodeState) -> None:
        self.settings = settings
        self.state = state
        self.process: multiprocessing.process.BaseProcess | None = None
        self._arrived = threading.Event()
        self._to_child: Connection | None = None
        self._from_child: Connection | None = None
        self._restarts = 0
        self._next_start = 0.0
        self._stopping = False
        threading.Thread(target=self._forward, name="to-workers", daemon=True).start()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> None:
        """Start the child (from the thread that will outlive it: see ``_die_with_parent``)."""
        context = multiprocessing.get_context("spawn")  # never fork a process with threads
        for old in (self._to_child, self._from_child):
            if old is not None:
                old.close()
        child_wake, self._to_child = context.Pipe(duplex=False)
        self._from_child, child_status = context.Pipe(duplex=False)
        share_metrics_with_children()  # the child counts into files that /metrics here reads
        self.process = context.Process(
            target=_child_main, name="mammo-scp-work", daemon=False,
            args=(self.settings, ParentLink(child_wake, child_status, os.getpid())))
        self.process.start()
        child_wake.close()
        child_status.close()
        logger.info("workers starting in process %d (nice %d)", self.process.pid,
                    self.settings.worker_nice)
        self._arrived.set()  # whatever arrived while no child was listening

    def wait_ready(self, timeout_s: float = 600.0) -> None:
        """Wait until the child has loaded its models; StartupError with its reason if it
        cannot."""
        assert self.process is not None and self._from_child is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._from_child.poll(0.2):
                try:
                    message = self._from_child.recv_bytes()
                except EOFError:
                    message = FAILED + b"it exited during start-up"
                if message == READY:
                    self.state.models_loaded = True
                    return
                if message.startswith(FAILED):
                    self.process.join(10)
                    raise StartupError(message[len(FAILED):].decode(errors="replace"))
            elif not self.process.is_alive():
                raise StartupError(f"the worker process exited with code "
                                   f"{self.process.exitcode} during start-up")
        self.stop()
        raise StartupError(f"the worker process did not load the models in {timeout_s:.0f} s")

    def notify(self) -> None:
        """Called by C-STORE: cheap, never blocks on the child."""
        self._arrived.set()

    def _forward(self) -> None:
        while True:
            self._arrived.wait()
            self._arrived.clear()
            try:
                if self._to_child is not None:
                    self._to_child.send_bytes(ARRIVED)
            except OSError:
                pass  # the child is gone; supervise() restarts it and it polls on start

    def supervise(self) -> None:
        """Take the child's messages; restart it (with backoff) if it died."""
        assert self.process is not None and self._from_child is not None
        try:
            while self._from_child.poll():
                message = self._from_child.recv_bytes()
                if message == READY:
                    self.state.models_loaded = True
                    self._restarts = 0
                elif message.startswith(FAILED):
                    logger.error("the worker process cannot start: %s",
                                 message[len(FAILED):].decode(errors="replace"))
        except (EOFError, OSError):
            pass
        if self.process.is_alive() or self._stopping:
            return
        self.state.models_loaded = False
        now = time.monotonic()
        if self._next_start == 0.0:
            wait = self.RESTART_BACKOFF_S[min(self._restarts, len(self.RESTART_BACKOFF_S) - 1)]
            logger.error("the worker process %d exited with code %s; restarting it in %.0f s",
                         self.process.pid, self.process.exitcode, wait)
            self._next_start = now + wait
        if now >= self._next_start:
            self._next_start = 0.0
            self._restarts += 1
            self.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stopping = True
        if self.process is None:
            return
        self.process.terminate()  # SIGTERM: the child finishes its current step and exits
        self.process.join(timeout_s)
        if self.process.is_alive():
            logger.warning("the worker process %d did not stop in %.0f s; killing it",
                           self.process.pid, timeout_s)
            self.process.kill()
            self.process.join()
        forget_children_metrics()


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the thread that started it ends: a
    ``kill -9`` of ``serve`` must not leave a worker running without its SCP."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the closed pipe still stops the child
        logger.debug("prctl(PR_SET_PDEATHSIG) unavailable")


PR_SET_PDEATHSIG = 1


def _freeze_startup_objects() -> None:
    """Keep what start-up made (modules, settings, models) out of the garbage collector's scans.

    Every few seconds of traffic, the allocations of associations trigger a full
    collection, which walked every object imported and built at start-up: ~100 ms with
    the GIL held, every ~4 s with C-ECHO probing alone, and each time every association
    thread waited (p99 of C-ECHO ~100 ms on an idle node). Frozen objects are never
    scanned nor freed; what the node allocates from now on is collected as before.
    """
    gc.collect()
    gc.freeze()
    logger.debug("%d objects kept out of garbage collection", gc.get_freeze_count())


def worker_process_title(parent_pid: int) -> str:
    """What ``ps`` shows for the worker process of ``serve`` (not ``python -B -c from
    multiprocessing.spawn ...``)."""
    return f"mammo-scp serve: workers (child of {parent_pid})"


def _child_main(settings: Settings, parent: ParentLink) -> None:
    """The child process of :class:`WorkerProcess`: ``work`` without its own HTTP side."""
    import setproctitle

    setproctitle.setproctitle(worker_process_title(parent.pid))  # also /proc/PID/comm
    _die_with_parent()
    if os.getppid() != parent.pid:  # the parent died before prctl took effect
        os._exit(1)
    os.nice(settings.worker_nice)
    configure_logging(settings.log_level)
    try:
        code = run(settings.model_copy(update={"http_port": 0}), with_scp=False,
                   parent=parent)
    except StartupError as exc:
        parent.status.send_bytes(FAILED + str(exc).encode())
        code = 2
    sys.exit(code)
