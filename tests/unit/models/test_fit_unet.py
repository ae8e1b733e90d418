"""fit_unet's batch workers: a worker that dies stops training loudly instead of hanging."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from mammo_scp.training import fit_unet
from mammo_scp.training.recipe import TrainConfig


def _tiny_pack(path: Path, n: int = 4) -> Path:
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {}
    for i in range(n):
        arrays[f"image{i}"] = rng.random((64, 48)).astype(np.float16)
        masks = np.zeros((1 if i % 2 else 0, 64, 48), np.float16)
        if len(masks):
            masks[0, 20:30, 15:25] = 1
        arrays[f"masks{i}"] = masks
        arrays[f"labels{i}"] = np.array([1] * len(masks), np.int32)
    meta = {"data": "synthetic", "model_spacing_mm": 0.8, "val_fraction": 0.25,
            "split_seed": 0, "keys": [f"img{i}" for i in range(n)]}
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)  # type: ignore[arg-type]
    return path


def test_batches_come_in_order_and_a_dead_worker_stops_them(tmp_path):
    pack = _tiny_pack(tmp_path / "pack.npz")
    fit_unet._load(pack)
    cfg = TrainConfig(kind="unet", data="synthetic", out=str(tmp_path), epochs=50, batch=2,
                      train_shape=(64, 48), model_spacing_mm=0.8)
    others = {p.pid for p in multiprocessing.active_children()}
    batches = fit_unet._batches(cfg, pack, workers=1)
    x, y = next(batches)
    expected = fit_unet._batch(fit_unet._epoch_tasks(cfg, 0)[0])  # the same, made here
    assert x.shape == (2, 64, 48, 1) and np.array_equal(x, expected[0])
    assert np.array_equal(y, expected[1])

    workers = [p.pid for p in multiprocessing.active_children() if p.pid not in others]
    assert workers
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    outcome: list[BaseException | None] = []

    def drain() -> None:
        try:
            for _ in batches:
                pass
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - what ended the loop is the result
            outcome.append(exc)

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "training waited for a batch from a dead worker"
    assert isinstance(outcome[0], BrokenProcessPool)
