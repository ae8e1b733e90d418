"""How long the CLI's read commands take, end to end, as an operator runs them.

Creates a node database in a temporary directory (``db upgrade``) holding 50 four-view
studies with a job each, then runs ``jobs list``, ``jobs show``, ``studies list`` and
``config show`` as separate processes (the installed ``mammo-scp`` script), several times
each, and prints the median and the slowest wall time per command, with the CPU, its flags
that matter to the node (avx2, avx512f, avx512_bf16, amx), the load average and whether
Python may cache bytecode (``PYTHONDONTWRITEBYTECODE`` makes every run compile the node's
own modules again).

    python benchmarks/cli.py [--runs 7]

Target (issue #27): each under 0.5 s on 2 cores. ``serve``, ``work``, ``preview`` and
``models`` load TensorFlow and are not measured here.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
TARGET_S = 0.5


def cpu() -> tuple[str, list[str]]:
    """The CPU's model name and which of :data:`CPU_FLAGS` it has."""
    model, flags = "unknown", set()
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            name, _, value = line.partition(":")
            if name.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif name.strip() == "flags":
                flags = set(value.split())
                break
    return model, [f for f in CPU_FLAGS if f in flags]


def populate(config: Path, studies: int) -> None:
    """``db upgrade``, then ``studies`` four-view studies, each with a job."""
    subprocess.run([sys.executable, "-m", "mammo_scp", "db", "upgrade", "--config",
                    str(config)], check=True, capture_output=True)
    import sqlalchemy as sa

    from mammo_scp.completion import queue_ready_studies
    from mammo_scp.config import load_settings
    from mammo_scp.db import Database
    from mammo_scp.jobs.models import Instance, Study, utcnow

    db = Database(load_settings(config, environ={}).db_url)
    now = utcnow()
    with db.session() as session:
        for s in range(studies):
            study = Study(study_uid=f"1.2.826.0.1.{s + 1}", first_received_at=now,
                          last_received_at=now)
            session.add(study)
            session.flush()
            for v, (laterality, view) in enumerate([("R", "CC"), ("L", "CC"), ("R", "MLO"),
                                                    ("L", "MLO")]):
                uid = f"1.2.826.0.1.{s + 1}.{v + 1}"
                session.add(Instance(
                    sop_instance_uid=uid, sop_class_uid="1.2.840.10008.5.1.4.1.1.1.2",
                    series_uid=f"1.2.826.0.1.{s + 1}.0", study_id=study.id,
                    transfer_syntax="1.2.840.10008.1.2.1", laterality=laterality, view=view,
                    path=f"instances/{uid}.dcm", size_bytes=1, calling_ae="BENCH",
                    received_at=now))
        assert session.scalar(sa.select(sa.func.count()).select_from(Study)) == studies
    queue_ready_studies(db, quiet_period_s=30)
    db.dispose()


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_command(argv: list[str], runs: int) -> tuple[list[float], list[float]]:
    """Wall seconds and CPU seconds (user + system) of each of ``runs`` runs of
    ``mammo-scp argv`` (all must succeed). CPU time says what a call costs whatever else
    the machine is doing; wall time is what the operator waits."""
    script = Path(sys.executable).parent / "mammo-scp"
    wall, cpu_s = [], []
    for _ in range(runs):
        cpu_before = _children_cpu_s()
        started = time.perf_counter()
        done = subprocess.run([str(script), *argv], capture_output=True, text=True)
        wall.append(time.perf_counter() - started)
        cpu_s.append(_children_cpu_s() - cpu_before)
        if done.returncode != 0:
            raise SystemExit(f"mammo-scp {' '.join(argv)} failed:\n{done.stderr}")
    return wall, cpu_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--studies", type=int, default=50)
    args = parser.parse_args()

    model, flags = cpu()
    print(f"CPU: {model}, {os.cpu_count()} cores; flags: "
          f"{', '.join(flags) if flags else 'none of ' + ', '.join(CPU_FLAGS)}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"bytecode cache: {'off' if os.environ.get('PYTHONDONTWRITEBYTECODE') else 'on'} "
          "(PYTHONDONTWRITEBYTECODE)")
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "node.toml"
        config.write_text(f'data_dir = "{Path(tmp) / "data"}"\n')
        populate(config, args.studies)
        print(f"\n{args.runs} runs each, seconds; target: wall median < {TARGET_S} s")
        print(f"  {'command':38s} {'wall median':>11s} {'slowest':>8s} {'CPU median':>11s}")
        worst = 0.0
        for argv in (["--version"], ["jobs", "list"], ["jobs", "show", "1"],
                     ["studies", "list"], ["config", "show"]):
            options = [] if argv == ["--version"] else ["--config", str(config)]
            wall, cpu_s = time_command([*argv, *options], args.runs)
            median = statistics.median(wall)
            if argv != ["--version"]:
                worst = max(worst, median)
            print(f"  {'mammo-scp ' + ' '.join(argv):38s} {median:11.3f} {max(wall):8.3f} "
                  f"{statistics.median(cpu_s):11.3f}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"slowest median {worst:.3f} s: {'within' if worst < TARGET_S else 'ABOVE'} the "
          f"{TARGET_S} s target")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
