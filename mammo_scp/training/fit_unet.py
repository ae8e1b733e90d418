"""U-Net training through Keras' own ``fit`` loop, on any Keras 3 backend.

``mammo-scp models train unet`` trains with TensorFlow. A GPU machine may have JAX but no
TensorFlow, and no way to install it (nothing can be fetched there, and its wheel is far over
what can be carried). This trains the same network (``unet.build_unet``), with the same
augmentation, loss and learning-rate schedule, on whatever backend ``KERAS_BACKEND`` names, and
writes a run folder that ``mammo-scp models export --run`` takes like any other.

Two steps, so the training images need not travel:

    python -m mammo_scp.training.fit_unet pack --data ../shared/data/mias-train --spacing 0.4 \\
        --out pack.npz          # here: the training split, preprocessed, in one file
    KERAS_BACKEND=jax python -m mammo_scp.training.fit_unet fit --pack pack.npz --out RUN ...

The weight average (``--ema``) is Keras' own (``use_ema`` of the optimizer): it is written
into the weights when training ends. There is no validation during training; the validation
split stays where the data is and is measured there with ``models evaluate``.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import shlex
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from mammo_scp.training import augment as aug
from mammo_scp.training.recipe import (
    TrainConfig,
    TrainState,
    Triple,
    epoch_order,
    load_init_weights,
    make_examples,
    mass_patches,
    optimizer,
    save_npz,
    write_config,
)

logger = logging.getLogger(__name__)

# the training samples and the masses cut from them, in the trainer and in each worker
_SAMPLES: list[Triple] = []
_PATCHES: list[aug.MassPatch] = []

Task = tuple[int, int, list[int], TrainConfig]  # epoch, step, sample indices, settings


def pack(data: Path, spacing_mm: float, out: Path, val_fraction: float = 0.25,
         split_seed: int = 0) -> int:
    """Preprocess the training split of ``data`` at ``spacing_mm`` into one ``.npz``."""
    from mammo_scp.training.data import load_records, load_samples, split_by_woman

    records = load_records(data)
    train_recs, _ = split_by_woman(records, val_fraction, split_seed)
    samples = load_samples(train_recs, spacing_mm)
    arrays: dict[str, np.ndarray] = {}
    for i, s in enumerate(samples):
        arrays[f"image{i}"] = s.image.astype(np.float16)
        arrays[f"masks{i}"] = s.lesion_masks.astype(np.float16)
        arrays[f"labels{i}"] = np.array([les.label for les in s.record.lesions], np.int32)
    meta = {"data": str(data), "model_spacing_mm": spacing_mm, "val_fraction": val_fraction,
            "split_seed": split_seed, "keys": [s.record.key for s in samples]}
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez_compressed(out, **arrays)  # type: ignore[arg-type]
    return len(samples)


def _read_pack(path: Path) -> tuple[dict[str, Any], list[Triple]]:
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        samples = [(z[f"image{i}"].astype(np.float32), z[f"masks{i}"].astype(np.float32),
                    [int(v) for v in z[f"labels{i}"]]) for i in range(len(meta["keys"]))]
    return meta, samples


def _load(path: Path) -> dict[str, Any]:
    """Read a pack into this process' ``_SAMPLES`` and ``_PATCHES``; its metadata."""
    global _SAMPLES, _PATCHES
    meta, _SAMPLES = _read_pack(path)
    _PATCHES = mass_patches(_SAMPLES)
    return meta


def _batch(task: Task) -> tuple[np.ndarray, np.ndarray]:
    """One augmented batch; its randomness comes from (seed, epoch, step) alone."""
    epoch, step, idx, cfg = task
    rng = np.random.default_rng([cfg.seed, epoch, step])
    examples = make_examples(_SAMPLES, idx, cfg, rng, _PATCHES)
    return (np.stack([e.image for e in examples])[..., None].astype(np.float32),
            np.stack([e.mask for e in examples])[..., None].astype(np.float32))


def _epoch_tasks(cfg: TrainConfig, epoch: int) -> list[Task]:
    """One epoch's batches as tasks for the worker pool (the recipe's epoch order, drawn
    from (seed, epoch) so that any worker can make any batch)."""
    order = epoch_order([len(masks) > 0 for _, masks, _ in _SAMPLES], cfg,
                        np.random.default_rng([cfg.seed, epoch]))
    b = cfg.batch
    return [(epoch, k, order[k * b:(k + 1) * b], cfg) for k in range(len(order) // b)]


def _batches(cfg: TrainConfig, pack_path: Path, workers: int
             ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every epoch's batches in order; the next epoch is augmented while this one trains.

    The workers are spawned, not forked: forking a process that runs JAX can deadlock. A
    worker that dies (killed, out of memory) stops training with ``BrokenProcessPool``
    rather than leaving it waiting for a batch that will never come, as a
    ``multiprocessing.Pool`` would."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=spawn, initializer=_load,
                             initargs=(pack_path,)) as pool:
        pending = [pool.submit(_batch, task) for task in _epoch_tasks(cfg, 0)]
        try:
            for epoch in range(cfg.epochs):
                batches = [future.result() for future in pending]
                if epoch + 1 < cfg.epochs:
                    pending = [pool.submit(_batch, task)
                               for task in _epoch_tasks(cfg, epoch + 1)]
                yield from batches
        finally:  # stopped early (time budget): the next epoch's batches are not needed
            for future in pending:
                future.cancel()


def fit(args: argparse.Namespace) -> Path:
    import keras

    from mammo_scp.models.unet import UNetConfig, build_unet, segmentation_loss

    meta = _load(Path(args.pack))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(
        kind="unet", data=meta["data"], out=str(out), epochs=args.epochs, seed=args.seed,
        batch=args.batch, lr=args.lr, model_spacing_mm=meta["model_spacing_mm"],
        train_shape=tuple(args.train_shape), val_fraction=meta["val_fraction"],
        split_seed=meta["split_seed"], mass_repeat=args.mass_repeat,
        insert_prob=args.insert_prob, scale=tuple(args.scale), val_every=0,
        crop=tuple(args.crop) if args.crop else None, crop_lesion_prob=args.crop_lesion_prob,
        init_weights=str(args.init) if args.init else None, ema=args.ema,
        model={"width": args.width, "depth": args.depth})
    command = " ".join(shlex.quote(a) for a in
                       ["python", "-m", "mammo_scp.training.fit_unet", *args.argv])
    keras.utils.set_random_seed(args.seed)
    ucfg = UNetConfig(width=args.width, depth=args.depth)
    model = build_unet(ucfg)
    if cfg.init_weights:
        model.set_weights(load_init_weights(Path(cfg.init_weights)))
        logger.info("initialised from %s", cfg.init_weights)
    steps = len(_epoch_tasks(cfg, 0))
    model.compile(optimizer=optimizer(cfg, steps, use_ema=cfg.ema is not None,
                                      ema_momentum=cfg.ema if cfg.ema is not None else 0.99),
                  loss=segmentation_loss)
    history: list[dict[str, float]] = []
    started = time.time()

    class Log(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.t0 = time.time()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            record = {"epoch": epoch + 1, "loss": float((logs or {}).get("loss", np.nan)),
                      "seconds": time.time() - self.t0}
            history.append(record)
            logger.info("unet %s", json.dumps(record))
            if args.budget_s and time.time() - started > args.budget_s:
                logger.warning("time budget of %d s spent: stopping after epoch %d",
                               args.budget_s, epoch + 1)
                self.model.stop_training = True

    logger.info("fitting U-Net %s on %d images, %d steps per epoch, backend %s", ucfg,
                len(_SAMPLES), steps, keras.backend.backend())
    model.fit(_batches(cfg, Path(args.pack), args.workers), steps_per_epoch=steps,
              epochs=args.epochs, callbacks=[Log()], verbose=0)
    weights = model.get_weights()  # the weight average, when there is one (put in at the end)
    save_npz(out / "last.npz", weights)
    write_config(out, cfg, ucfg.to_dict(), command=command, backend=keras.backend.backend())
    ckpt = out / "checkpoint"
    ckpt.mkdir(exist_ok=True)
    state = TrainState(epoch=len(history), history=history)
    (ckpt / "state.json").write_text(json.dumps({"state": asdict(state)}))
    logger.info("wrote %s after %d epochs in %.0f s", out, len(history), time.time() - started)
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="python -m mammo_scp.training.fit_unet",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("pack", help="preprocess a training split into one .npz")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--spacing", type=float, default=0.4)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--val-fraction", type=float, default=0.25)
    p.add_argument("--split-seed", type=int, default=0)
    f = sub.add_parser("fit", help="train on a pack with the Keras backend of KERAS_BACKEND")
    f.add_argument("--pack", type=Path, required=True)
    f.add_argument("--out", type=Path, required=True)
    f.add_argument("--epochs", type=int, default=200)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--batch", type=int, default=16)
    f.add_argument("--lr", type=float, default=1e-3)
    f.add_argument("--width", type=int, default=16)
    f.add_argument("--depth", type=int, default=4)
    f.add_argument("--train-shape", type=int, nargs=2, default=(512, 384))
    f.add_argument("--crop", type=int, nargs=2, default=None)
    f.add_argument("--crop-lesion-prob", type=float, default=0.7)
    f.add_argument("--mass-repeat", type=int, default=3)
    f.add_argument("--insert-prob", type=float, default=0.5)
    f.add_argument("--scale", type=float, nargs=2, default=aug.DEFAULT_SCALE, metavar=("LO", "HI"),
                   help="zoom range of the augmentation")
    f.add_argument("--ema", type=float, default=None)
    f.add_argument("--init", type=Path, default=None,
                   help="start from a run's .npz or a shipped model folder (models/unet/V)")
    f.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    f.add_argument("--budget-s", type=float, default=None,
                   help="stop after the epoch that passes this many seconds")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.verb == "pack":
        n = pack(args.data, args.spacing, args.out, args.val_fraction, args.split_seed)
        logger.info("%s: %d training images at %s mm", args.out, n, args.spacing)
        return 0
    fit(args)  # logs the run folder it wrote
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
