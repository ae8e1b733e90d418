"""A longer run of the pixel fuzz test (issue 25): more studies, any seed.

Runs ``tests/integration/test_fuzz_pixels.py`` with ``MAMMO_FUZZ_STUDIES`` and
``MAMMO_FUZZ_SEED`` set, and prints its summary line (statuses by kind, skip reasons,
time to process the corpus, time for a normal study after it).

    python benchmarks/fuzz_pixels.py [--studies 200] [--seed 1] [--seeds 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=1, help="how many seeds, from --seed")
    args = parser.parse_args()
    failed = 0
    for seed in range(args.seed, args.seed + args.seeds):
        env = {**os.environ, "MAMMO_FUZZ_STUDIES": str(args.studies),
               "MAMMO_FUZZ_SEED": str(seed)}
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
             "tests/integration/test_fuzz_pixels.py"], cwd=REPO, env=env,
            capture_output=True, text=True, check=False)
        lines = done.stdout.splitlines()
        summary = [line for line in lines if line.startswith("fuzz corpus")]
        why = [line for line in lines if line.startswith("E ")][:30]
        print(f"seed {seed}: {'passed' if done.returncode == 0 else 'FAILED'}; "
              + (summary[0] if summary else "\n".join(why) or done.stdout[-3000:]))
        failed += done.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
