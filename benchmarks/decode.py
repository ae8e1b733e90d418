"""What decoding compressed pixel data in a process of its own costs (issue 25).

A full-field 4-view study (4096 x 3328, 12 bits in 16) compressed in each compressed
transfer syntax the node accepts and can encode here: per study, the median over rounds of
decoding the four images in the worker itself (``ds.pixel_array``) and through
:func:`mammo_scp.decode.decode_pixels` (a child process, kept between images), and the
first decode's cost of starting that child.

    python benchmarks/decode.py [--rounds 5] [--rows 4096 --cols 3328]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid  # noqa: E402

from mammo_scp.decode import DECODERS, decode_pixels  # noqa: E402
from tests.support.mg import FOUR_VIEWS, make_mg  # noqa: E402


def study(rows: int, cols: int, syntax: str) -> list:  # type: ignore[type-arg]
    uid = generate_uid()
    out = []
    for k, (lat, view) in enumerate(FOUR_VIEWS, start=1):
        ds = make_mg(lat, view, study_uid=uid, rows=rows, cols=cols, seed=k)
        ds.compress(syntax, encoding_plugin="pydicom" if syntax == RLELossless else "")
        out.append(ds)
    return out


def in_process(datasets: list) -> float:  # type: ignore[type-arg]
    started = time.perf_counter()
    for ds in datasets:
        ds._pixel_array = None  # no cached array
        ds._pixel_id = {}
        np.asarray(ds.pixel_array)
    return time.perf_counter() - started


def isolated(datasets: list) -> float:  # type: ignore[type-arg]
    started = time.perf_counter()
    for ds in datasets:
        decode_pixels(ds)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=3328)
    args = parser.parse_args()
    for syntax in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
        datasets = study(args.rows, args.cols, syntax)
        size = sum(len(ds.PixelData) for ds in datasets) / 1e6
        DECODERS.close()
        first = isolated(datasets[:1])
        here = [in_process(datasets) for _ in range(args.rounds)]
        child = [isolated(datasets) for _ in range(args.rounds)]
        a, b = statistics.median(here), statistics.median(child)
        print(f"{syntax.name:45s} {size:6.1f} MB: 4 images in process {a * 1e3:7.0f} ms, "
              f"in the decoder process {b * 1e3:7.0f} ms (+{(b - a) * 1e3:.0f} ms, "
              f"{100 * (b - a) / a:+.0f} %); first image with the child's start "
              f"{first * 1e3:.0f} ms")
    DECODERS.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
