"""Study latency, model time, memory and responsiveness of `mammo-scp serve`, in one run.

For each of N four-view studies (real mini-MIAS images, 1024 x 1024 at 0.2 mm, or with
``--full-field`` phantoms of 4096 x 3328 at 0.07 mm, 14-bit; fresh UIDs for each):
storescu sends it to the node; latency runs from the last instance acknowledged to the
last result acknowledged by the destination (dcmtk storescp). Then N more studies the
same way while C-ECHO probes the node every 50 ms. In the same run:

* the pure model time of the same four images (the shipped models in this process),
* peak RSS of serve and its worker process (VmHWM of each, summed) with both models
  loaded and studies in flight,
* the C-ECHO round trips, while the workers run the models.

The latency is given for both halves: on a 2-core machine the prober's 20 associations a
second take CPU from the models (one run on 2026-12-02: the analyze stage 377 ms alone,
453 ms probed), which is not the node's own work, though a site's traffic does the same.

    python benchmarks/node.py [--studies 10] [--precision fp32|bf16] [--full-field] [--gap-s S]

Targets (issue #6): latency <= 1.15 x model time; a 4-view study end to end <= 4 s on
2 cores; RSS <= 2.5 GiB; C-ECHO p99 <= 100 ms.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import sqlalchemy as sa  # noqa: E402
from pydicom import dcmread  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from benchmarks.ingest import full_field_copy  # noqa: E402
from mammo_scp.config import SHIPPED_MODELS  # noqa: E402
from mammo_scp.db import Database  # noqa: E402
from mammo_scp.jobs.models import Delivery, Job, Study  # noqa: E402
from mammo_scp.jobs.states import JobState  # noqa: E402
from tests.support.load import Echoes, percentile  # noqa: E402
from tests.support.mg import FOUR_VIEWS, add_mass, breast_phantom, make_mg  # noqa: E402
from tests.support.mias import mias_dataset  # noqa: E402
from tests.support.peers import (  # noqa: E402
    DCMTK_BIN,
    NodeProcess,
    StoreSCP,
    free_port,
    wait_for,
    write_config,
)

WOMEN = [("mdb009", "mdb010"), ("mdb011", "mdb012"), ("mdb013", "mdb014"),
         ("mdb017", "mdb018"), ("mdb019", "mdb020")]


def full_field_views(directory: Path) -> list[Path]:
    """Four full-field views (4096 x 3328 at 0.07 mm, 14-bit, windowed, as a unit sends For
    Presentation images), phantoms with a mass in each right breast."""
    directory.mkdir(parents=True)
    study_uid = generate_uid()
    paths = []
    for n, (laterality, view) in enumerate(FOUR_VIEWS, start=1):
        pixels = breast_phantom(4096, 3328, laterality, seed=n, bits=14)
        if laterality == "R":
            pixels = add_mass(pixels, (2000, 900), 110)
        ds = make_mg(laterality, view, study_uid=study_uid, pixels=pixels, bits_stored=14,
                     spacing_mm=0.07, instance_number=n)
        ds.WindowCenter, ds.WindowWidth = 8192, 16384
        path = directory / f"{laterality}{view}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_study(directory: Path, index: int) -> list[Path]:
    right, left = WOMEN[index % len(WOMEN)]
    study_uid = generate_uid()
    directory.mkdir(parents=True)
    paths = []
    for n, (laterality, view) in enumerate(FOUR_VIEWS, start=1):
        ds = mias_dataset(right if laterality == "R" else left, view, study_uid=study_uid,
                          instance_number=n)
        path = directory / f"{laterality}{view}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def stage_breakdown(db: Database, skip: int, until: int) -> dict[str, float]:
    """Median ms per step of the jobs from ``skip`` to ``until`` (in order): waiting for the
    completion rule and a worker, each pipeline stage, writing the results (files and
    database), and delivery."""
    steps: dict[str, list[float]] = {}
    with db.read_session() as session:
        jobs = session.scalars(sa.select(Job).order_by(Job.id)).all()[skip:until]
        for job in jobs:
            events = job.events
            queued = next(e.at for e in events if e.to_state == JobState.QUEUED)
            claimed = next(e.at for e in events if e.to_state == JobState.RUNNING)
            last_in = max(i.received_at for i in job.instances)
            steps.setdefault("completion rule", []).append(
                (queued - last_in).total_seconds() * 1000)
            steps.setdefault("queue wait", []).append((claimed - queued).total_seconds() * 1000)
            for event in events:
                if event.stage:
                    steps.setdefault(event.stage, []).append(event.duration_ms or 0.0)
            finished = next((e.at for e in events if e.to_state == JobState.DELIVERING), None)
            if finished is None:  # no findings: nothing was sent
                continue
            staged = max(e.at for e in events if e.stage)
            steps.setdefault("write results", []).append(
                (finished - staged).total_seconds() * 1000)
            delivered = max(d.delivered_at for d in job.deliveries if d.delivered_at)
            steps.setdefault("delivery", []).append((delivered - finished).total_seconds() * 1000)
    return {k: statistics.median(v) for k, v in steps.items()}


def peak_rss_mib(pid: int) -> dict[int, float]:
    """Peak RSS (VmHWM) of ``pid`` and of each of its children (serve's worker process)."""
    peaks = {}
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for each in [pid, *map(int, children)]:
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks[each] = int(line.split()[1]) / 1024
    return peaks


def model_time_ms(files: list[Path], precision: str) -> tuple[float, float]:
    """Milliseconds of pure inference for the four images (after a warm-up), load seconds."""
    from mammo_scp.models.analyzer import Analyzer

    started = time.perf_counter()
    analyzer = Analyzer.load(SHIPPED_MODELS, precision=precision)
    load_s = time.perf_counter() - started
    datasets = [dcmread(p) for p in files]
    analyzer.analyze(datasets[0])  # warm-up: graph tracing
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        for ds in datasets:
            analyzer.analyze(ds)
        runs.append((time.perf_counter() - started) * 1000)
    return statistics.median(runs), load_s


def send_and_wait(files: list[Path], port: int, db: Database, gap_s: float | None) -> float:
    """Send one study; ms from its last instance acknowledged to its last result
    acknowledged by the destination (or its job's end, when it has nothing to send)."""
    # All four views on one association, or one at a time gap_s apart.
    batches = [files] if gap_s is None else [[f] for f in files]
    for n, batch in enumerate(batches):
        if n:
            time.sleep(gap_s)
        done = subprocess.run([str(DCMTK_BIN / "storescu"), "-v", "-aec", "MAMMO_SCP",
                               "127.0.0.1", str(port), *map(str, batch)],
                              capture_output=True, text=True, timeout=120)
        assert done.stderr.count("(Success)") == len(batch), done.stderr
    acknowledged = datetime.now(UTC).replace(tzinfo=None)
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)

    def finished() -> datetime | None:
        with db.read_session() as session:
            job = session.scalars(
                sa.select(Job).join(Study).where(Study.study_uid == study_uid)).first()
            if job is None or job.state not in (JobState.DONE, JobState.DEAD_LETTER):
                return None
            delivered = session.scalar(sa.select(sa.func.max(Delivery.delivered_at))
                                       .where(Delivery.job_id == job.id))
            return delivered or job.updated_at

    last = wait_for(finished, 300, interval=0.02, what="the study's results")
    return (last - acknowledged).total_seconds() * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=10)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--full-field", action="store_true",
                        help="full-field phantom studies (4096 x 3328, 14-bit) instead of "
                             "mini-MIAS")
    parser.add_argument("--gap-s", type=float, default=None,
                        help="send the views one at a time, this many seconds apart, as a "
                             "unit sends them while it takes them (default: all four at once)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        half = args.studies
        if args.full_field:
            views = full_field_views(tmp / "views")
            studies = [full_field_copy(views, tmp / f"study{n}") for n in range(2 * half)]
        else:
            studies = [write_study(tmp / f"study{n}", n) for n in range(2 * half)]
        pacs = StoreSCP(tmp / "pacs", free_port()).start()
        port = free_port()
        url = f"sqlite:///{tmp / 'node.db'}"
        config = write_config(tmp / "node.toml", {
            "port": port, "bind_address": "127.0.0.1", "data_dir": str(tmp / "data"),
            "database_url": url, "poll_interval_s": 1.0, "min_free_mb": 1,
            "inference_precision": args.precision,
            "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                              "port": pacs.port}]})
        node = NodeProcess("serve", config, tmp / "serve.log").start()
        node.wait_listening(port, "MAMMO_SCP", timeout=300)
        db = Database(url)
        echoes = Echoes(port, "MAMMO_SCP")
        try:
            # First the node alone, then again with the C-ECHO prober: 20 associations a
            # second take CPU from the models that is not the node's own work.
            quiet = [send_and_wait(files, port, db, args.gap_s) for files in studies[:half]]
            echoes.start()
            probed = [send_and_wait(files, port, db, args.gap_s) for files in studies[half:]]
            breakdown = stage_breakdown(db, skip=1, until=half)
        finally:
            echoes.finish()
            rss = peak_rss_mib(node.proc.pid) if node.proc else {}
            node.stop()
            pacs.stop()
        model_ms, load_s = model_time_ms(studies[0], args.precision)

    sent = ("the four views on one association" if args.gap_s is None else
            f"one view at a time, {args.gap_s:g} s apart")
    images = ("4096 x 3328 full-field phantom images" if args.full_field
              else "1024 x 1024 MIAS images")
    print(f"studies: {half} four-view studies of {images} "
          f"({args.precision}), {sent}; then {half} more while C-ECHO probes the node")
    print(f"pure model time for the same four images: {model_ms:.0f} ms "
          f"(models load in {load_s:.1f} s)")
    for what, latencies in (("alone", quiet), ("C-ECHO every 50 ms", probed)):
        p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
        print(f"latency last ack -> last result acknowledged, {what}: p50 {p50:.0f} ms, "
              f"p95 {p95:.0f} ms; / model time: p50 {p50 / model_ms:.2f}, "
              f"p95 {p95 / model_ms:.2f} (target <= 1.15); "
              f"each study: {' '.join(f'{ms:.0f}' for ms in latencies)}")
    print(f"4-view study end to end (p50, alone): {percentile(quiet, 50) / 1000:.2f} s "
          "(target <= 4 s)")
    print("where the time goes (median ms, studies alone after the first): "
          + ", ".join(f"{k} {v:.0f}" for k, v in breakdown.items()))
    print(f"peak RSS of serve and its worker process: {sum(rss.values()):.0f} MiB "
          f"({' + '.join(f'{v:.0f}' for v in rss.values())}; target <= 2560 MiB)")
    print(f"{echoes.summary()} (target p99 <= 100 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
