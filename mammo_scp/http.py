"""The HTTP side of a node process: /healthz, /readyz, /metrics and a read-only status page.

Plain standard-library HTTP in a background thread of the same process as
`serve` or `work`; nothing here changes state.
"""

from __future__ import annotations

import html
import json
import logging
import threading
import uuid
from dataclasses import dataclass
from datetime import timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import sqlalchemy as sa
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mammo_scp.config import Settings
from mammo_scp.db import Database, DatabaseUnavailable
from mammo_scp.jobs.models import Assessment, Delivery, Instance, Job, JobEvent, Study, utcnow
from mammo_scp.jobs.states import DeliveryState, JobState
from mammo_scp.metrics import REGISTRY, exposition
from mammo_scp.store.spool import Spool

logger = logging.getLogger(__name__)


class HttpStartError(Exception):
    """The HTTP side cannot listen (e.g. http_port is taken)."""


@dataclass
class NodeState:
    """What the HTTP side reports on; ``models_loaded`` is set once start-up has them."""

    settings: Settings
    db: Database
    spool: Spool
    models_loaded: bool


def readiness(state: NodeState) -> dict[str, str]:
    """Each readiness check and its result ("ok" or what is wrong)."""
    checks = {}
    try:
        state.db.ping()
        checks["database"] = "ok"
    except DatabaseUnavailable as exc:
        checks["database"] = f"unreachable: {exc}"
    needed = state.settings.workers > 0
    checks["models"] = "ok" if state.models_loaded or not needed else "not loaded"
    probe = state.spool.incoming / f".ready-{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
        checks["spool"] = "ok"
    except OSError as exc:
        checks["spool"] = f"not writable: {exc.strerror or exc}"
    return checks


class _QueueCollector(Collector):
    """Job and delivery gauges read from the database at scrape time."""

    def __init__(self) -> None:
        self.db: Database | None = None

    def collect(self) -> Any:
        if self.db is None:
            return
        jobs = GaugeMetricFamily("mammo_jobs", "Jobs by state", labels=["state"])
        deliveries = GaugeMetricFamily("mammo_deliveries", "Deliveries by state",
                                       labels=["state"])
        waiting = GaugeMetricFamily("mammo_instances_waiting",
                                    "Received instances no job has taken yet")
        depth = GaugeMetricFamily("mammo_queue_depth", "Jobs queued or running")
        try:
            with self.db.read_session() as session:
                job_counts = dict(session.execute(
                    sa.select(Job.state, sa.func.count()).group_by(Job.state)).all())
                delivery_counts = dict(session.execute(
                    sa.select(Delivery.state, sa.func.count()).group_by(Delivery.state)).all())
                untaken = session.scalar(sa.select(sa.func.count()).select_from(Instance)
                                         .where(Instance.job_id.is_(None)))
        except sa.exc.SQLAlchemyError:
            return
        for job_state in JobState:
            jobs.add_metric([job_state.value], job_counts.get(job_state, 0))
        for delivery_state in DeliveryState:
            deliveries.add_metric([delivery_state.value], delivery_counts.get(delivery_state, 0))
        waiting.add_metric([], untaken or 0)
        depth.add_metric([], job_counts.get(JobState.QUEUED, 0)
                         + job_counts.get(JobState.RUNNING, 0))
        yield from (jobs, deliveries, waiting, depth)


_QUEUE = _QueueCollector()
REGISTRY.register(_QUEUE)


def _handler(state: NodeState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "mammo-scp"

        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._send(HTTPStatus.OK, "application/json", b'{"status": "alive"}')
            elif path == "/readyz":
                checks = readiness(state)
                ready = all(v == "ok" for v in checks.values())
                body = json.dumps({"ready": ready, "checks": checks}).encode()
                self._send(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE,
                           "application/json", body)
            elif path == "/metrics":
                self._send(HTTPStatus.OK, CONTENT_TYPE_LATEST, exposition())
            elif path == "/":
                self._send(HTTPStatus.OK, "text/html; charset=utf-8",
                           status_page(state).encode())
            else:
                self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n")

        def _send(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            logger.debug("http %s", format % args)

    return Handler


def start_http(state: NodeState) -> ThreadingHTTPServer | None:
    """Serve the HTTP side in a daemon thread; None when ``http_port`` is 0."""
    if state.settings.http_port == 0:
        return None
    _QUEUE.db = state.db
    address = (state.settings.http_bind_address, state.settings.http_port)
    try:
        server = ThreadingHTTPServer(address, _handler(state))
    except OSError as exc:
        raise HttpStartError(f"cannot serve HTTP on {address[0]}:{address[1]} "
                             f"(http_port): {exc.strerror or exc}") from exc
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    logger.info("HTTP status on %s:%d (/healthz, /readyz, /metrics, /)",
                state.settings.http_bind_address, state.settings.http_port)
    return server


# --- the status page -------------------------------------------------------------------------

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; } td, th { padding: .25em .7em; border-bottom: 1px solid #ddd;
 text-align: left; } th { background: #f3f3f3; }
.state-done { color: #176f2c; } .state-failed, .state-dead_letter { color: #b00020; }
.state-running, .state-delivering { color: #0b57d0; } .tiles { display: flex; gap: 1em; }
.tile { border: 1px solid #ddd; padding: .6em 1em; border-radius: 6px; }
.tile b { display: block; font-size: 1.6em; } code { font-size: 12px; }
.assessment-elevated { color: #b00020; font-weight: bold; } .assessment-intermediate {
 color: #a15c00; } .assessment-low { color: #176f2c; }
"""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value))


def _ts(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def _assessment_cell(row: Assessment | None) -> str:
    """The exam's category and score, coloured by category, and each breast's in small."""
    if row is None:
        return "-"
    breasts = [f"{side} {category.value} {100.0 * score:.0f}%"
               for side, score, category in (("R", row.right_score, row.right_category),
                                             ("L", row.left_score, row.left_category))
               if score is not None and category is not None]
    return (f"<span class='assessment-{_e(row.exam_category.value)}'>"
            f"{_e(row.exam_category.value)} {100.0 * row.exam_score:.0f}%</span>"
            f"<br><small>{_e(', '.join(breasts))}</small>")


def status_page(state: NodeState, recent: int = 50) -> str:
    """The admin's read-only view: queue, recent jobs with timings, errors, destinations."""
    settings = state.settings
    since = utcnow() - timedelta(days=1)
    with state.db.read_session() as session:
        counts = dict(session.execute(
            sa.select(Job.state, sa.func.count()).group_by(Job.state)).all())
        waiting = session.scalar(sa.select(sa.func.count()).select_from(Instance)
                                 .where(Instance.job_id.is_(None))) or 0
        jobs = session.execute(
            sa.select(Job, Study.study_uid, Assessment).join(Study).outerjoin(Assessment)
            .order_by(Job.id.desc()).limit(recent)
        ).all()
        stage_ms: dict[int, dict[str, float]] = {}
        for job_id, stage, ms in session.execute(
                sa.select(JobEvent.job_id, JobEvent.stage, JobEvent.duration_ms)
                .where(JobEvent.stage.is_not(None),
                       JobEvent.job_id.in_([j.id for j, _, _ in jobs]))):
            stage_ms.setdefault(job_id, {})[str(stage)] = ms or 0.0
        job_errors = session.execute(
            sa.select(Job.id, Job.updated_at, Job.error).where(Job.error.is_not(None),
                                                               Job.updated_at >= since)
            .order_by(Job.updated_at.desc()).limit(20)).all()
        delivery_errors = session.execute(
            sa.select(Delivery.job_id, Delivery.destination, Delivery.last_error,
                      Delivery.state)
            .where(Delivery.last_error.is_not(None),
                   Delivery.state != DeliveryState.DELIVERED)
            .order_by(Delivery.id.desc()).limit(20)).all()
        last_success = dict(session.execute(
            sa.select(Delivery.destination, sa.func.max(Delivery.delivered_at))
            .group_by(Delivery.destination)).all())
        pending = dict(session.execute(
            sa.select(Delivery.destination, sa.func.count())
            .where(Delivery.state.in_([DeliveryState.PENDING, DeliveryState.SENDING]))
            .group_by(Delivery.destination)).all())

    tiles = [("queued", counts.get(JobState.QUEUED, 0)),
             ("running", counts.get(JobState.RUNNING, 0)),
             ("delivering", counts.get(JobState.DELIVERING, 0)),
             ("waiting instances", waiting),
             ("failed", counts.get(JobState.FAILED, 0)),
             ("dead letter", counts.get(JobState.DEAD_LETTER, 0)),
             ("done", counts.get(JobState.DONE, 0))]
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>mammo-scp "
           f"{_e(settings.ae_title)}</title><style>{_STYLE}</style></head><body>",
           f"<h1>mammo-scp &middot; {_e(settings.ae_title)} on port {settings.port}</h1>",
           "<div class='tiles'>"]
    out += [f"<div class='tile' id='tile-{_e(name.replace(' ', '-'))}'><b>{n}</b>{_e(name)}"
            "</div>" for name, n in tiles]
    out.append("</div><h2>Recent jobs</h2><table id='jobs'><tr><th>job</th><th>state</th>"
               "<th>trigger</th><th>study</th><th>assessment</th><th>created</th>"
               "<th>updated</th><th>stages (ms)</th><th>error</th></tr>")
    for job, study_uid, assessment in jobs:
        stages = ", ".join(f"{k} {v:.0f}" for k, v in stage_ms.get(job.id, {}).items())
        out.append(
            f"<tr><td>{job.id}</td><td class='state-{_e(job.state.value)}'>"
            f"{_e(job.state.value)}</td><td>{_e(job.trigger.value)}</td>"
            f"<td><code>{_e(study_uid)}</code></td><td>{_assessment_cell(assessment)}</td>"
            f"<td>{_ts(job.created_at)}</td>"
            f"<td>{_ts(job.updated_at)}</td><td>{_e(stages) or '-'}</td>"
            f"<td>{_e(job.error) or ''}</td></tr>")
    out.append("</table><h2>Recent errors (24 h)</h2><table id='errors'><tr><th>job</th>"
               "<th>where</th><th>error</th></tr>")
    for job_id, at, error in job_errors:
        out.append(f"<tr><td>{job_id}</td><td>job, {_ts(at)}</td><td>{_e(error)}</td></tr>")
    for job_id, destination, error, delivery_state in delivery_errors:
        out.append(f"<tr><td>{job_id}</td><td>delivery to {_e(destination)} "
                   f"({_e(delivery_state.value)})</td><td>{_e(error)}</td></tr>")
    out.append("</table><h2>Destinations</h2>")
    if not settings.destinations:
        out.append(
            "<p id='no-destinations'>No destinations: results stay in the spool "
            f"(<code>{_e(str(state.spool.results))}/&lt;job id&gt;/</code>). To send them, "
            "add a <code>[[destinations]]</code> table to the node's configuration "
            "(<code>name</code>, <code>ae_title</code>, <code>host</code>, <code>port</code>; "
            "or set <code>MAMMO_SCP_DESTINATIONS</code> to a JSON list) and restart the "
            "node.</p>")
    else:
        out.append("<table id='destinations'><tr><th>name</th><th>kind</th><th>target</th>"
                   "<th>last success</th><th>pending</th></tr>")
        for dest in settings.destinations:
            out.append(f"<tr><td>{_e(dest.name)}</td><td>{_e(dest.kind)}</td>"
                       f"<td>{_e(dest.target)}</td>"
                       f"<td>{_ts(last_success.get(dest.name))}</td>"
                       f"<td>{pending.get(dest.name, 0)}</td></tr>")
        out.append("</table>")
    out.append(f"<p>Generated {_ts(utcnow())} UTC. Read-only.</p></body></html>")
    return "\n".join(out)
