"""Load: 8 concurrent storescu senders of four-view studies for a minute against
`mammo-scp serve` with the shipped models; throughput, failed stores, lost jobs, and
C-ECHO round trips every 50 ms while the models run.

    python benchmarks/load.py [--senders 8] [--seconds 60]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


from mammo_scp.db import Database  # noqa: E402
from tests.support.load import Echoes, all_jobs_done, run_senders  # noqa: E402
from tests.support.peers import NodeProcess, free_port, wait_for, write_config  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--sender-nice", type=int, default=0,
                        help="run each storescu at this niceness (default 0, like the node); "
                             "the senders stand in for modalities, which are other machines")
    parser.add_argument("--propose-all", action="store_true",
                        help="senders propose storescu's ~120 storage classes on every "
                             "association instead of only the ones they send (-R)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        port = free_port()
        url = f"sqlite:///{tmp / 'node.db'}"
        config = write_config(tmp / "node.toml", {
            "port": port, "bind_address": "127.0.0.1", "data_dir": str(tmp / "data"),
            "database_url": url, "poll_interval_s": 0.1, "min_free_mb": 1,
            "workers": args.workers})
        node = NodeProcess("serve", config, tmp / "serve.log").start()
        node.wait_listening(port, "MAMMO_SCP", timeout=300)
        db = Database(url)
        echoes = Echoes(port, "MAMMO_SCP")
        echoes.start()
        try:
            sending = time.monotonic()
            result = run_senders(port, "MAMMO_SCP", tmp / "load", args.senders, args.seconds,
                                 nice=args.sender_nice, propose_all=args.propose_all)
            started = time.monotonic()
            wait_for(lambda: all_jobs_done(db, len(result.studies)), 1800, interval=1.0,
                     what="the queue to drain")
            drained = time.monotonic()
            drain = drained - started
        finally:
            echoes.finish()
            node.stop()
    proposing = "all storage classes" if args.propose_all else "only MG (-R)"
    print(f"{args.senders} senders (storescu at nice {args.sender_nice}, proposing "
          f"{proposing}) for "
          f"{result.seconds:.0f} s: {len(result.studies)} studies, "
          f"{result.stored} instances stored ({result.stored / result.seconds:.1f}/s), "
          f"{result.failed_stores} failed stores")
    print(f"queue drained {drain:.0f} s after the senders stopped; every study has one job, "
          f"done ({len(result.studies)} jobs)")
    print(f"{echoes.summary()} (target p99 <= 100 ms)")
    print(f"  while the senders send: {echoes.summary((sending, started))}")
    print(f"  while the queue drains (models only): {echoes.summary((started, drained))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
