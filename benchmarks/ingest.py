"""Ingest throughput of the node against dcmtk's storescp, alternating, in one run.

storescu sends the same full-field 4-view study (3328 x 4096, 16-bit, ~27 MB an image)
to `mammo-scp serve` (durable writes: fsync + rename + committed row before Success;
workers = 0 so only ingest is measured) and to `storescp` writing to disk, for several
rounds, the order alternating and the page cache synced before each send. Prints MB/s
per round and the median ratio node / storescp.

    python benchmarks/ingest.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.mg import FOUR_VIEWS, make_mg  # noqa: E402
from tests.support.peers import (  # noqa: E402
    DCMTK_BIN,
    NodeProcess,
    StoreSCP,
    free_port,
    write_config,
)

#: The same maximum PDU for both receivers (dcmtk's largest).
PDU = 131072


def full_field_study(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    study_uid = generate_uid()
    paths = []
    for n, (laterality, view) in enumerate(FOUR_VIEWS, start=1):
        pixels = rng.integers(0, 1 << 14, (4096, 3328), dtype=np.uint16)
        ds = make_mg(laterality, view, study_uid=study_uid, pixels=pixels, bits_stored=14,
                     spacing_mm=0.07, instance_number=n)
        path = directory / f"{laterality}{view}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def send(port: int, aet: str, files: list[Path]) -> float:
    """Seconds for storescu to send ``files`` in one association (all must succeed)."""
    started = time.perf_counter()
    done = subprocess.run([str(DCMTK_BIN / "storescu"), "-v", "-aec", aet, "--max-pdu",
                           str(PDU), "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - started
    ok = done.stderr.count("Received Store Response (Success)")
    if ok != len(files):
        raise RuntimeError(f"only {ok} of {len(files)} stored:\n{done.stderr[-2000:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=REPO.parent) as tmp_name:
        tmp = Path(tmp_name)
        files = full_field_study(tmp / "study")
        megabytes = sum(p.stat().st_size for p in files) / 1e6
        port = free_port()
        config = write_config(tmp / "node.toml", {
            "port": port, "bind_address": "127.0.0.1", "data_dir": str(tmp / "data"),
            "workers": 0, "min_free_mb": 1, "max_pdu": PDU})
        node = NodeProcess("serve", config, tmp / "serve.log").start()
        node.wait_listening(port, "MAMMO_SCP")
        reference = StoreSCP(tmp / "storescp", free_port(), "STORESCP", "--max-pdu",
                             str(PDU)).start()
        receivers = [(port, "MAMMO_SCP"), (reference.port, "STORESCP")]
        ratios = []
        try:
            for round_ in range(args.rounds):
                # The node acknowledges a duplicate without writing it again, so every
                # round sends the same pixels under new UIDs.
                fresh = full_field_copy(files, tmp / f"round{round_}")
                # Each receiver starts with nothing dirty in the page cache, so the node's
                # fsyncs do not also wait for the writeback of the copies just made or of
                # what storescp wrote; and the order alternates between rounds.
                order = receivers if round_ % 2 == 0 else receivers[::-1]
                seconds = {}
                for receiver_port, aet in order:
                    os.sync()
                    seconds[aet] = send(receiver_port, aet, fresh)
                t_node, t_ref = seconds["MAMMO_SCP"], seconds["STORESCP"]
                ratio = t_ref / t_node
                ratios.append(ratio)
                print(f"round {round_ + 1}: node {megabytes / t_node:7.1f} MB/s   "
                      f"storescp {megabytes / t_ref:7.1f} MB/s   node/storescp {ratio:.2f}")
        finally:
            node.stop()
            reference.stop()
        print(f"study: 4 images, {megabytes:.1f} MB; median node/storescp throughput "
              f"{statistics.median(ratios):.2f} over {len(ratios)} rounds (target >= 0.9)")
    return 0


def full_field_copy(files: list[Path], directory: Path) -> list[Path]:
    """The same pixels under new UIDs, so each round stores new instances."""
    from pydicom import dcmread

    directory.mkdir()
    study_uid = generate_uid()
    out = []
    for path in files:
        ds = dcmread(path)
        ds.StudyInstanceUID = study_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        target = directory / path.name
        ds.save_as(target, enforce_file_format=True)
        out.append(target)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
