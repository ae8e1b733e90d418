"""The training recipe both trainers share, with no TensorFlow in it.

``models train`` (:mod:`mammo_scp.training.train`, TensorFlow) and ``fit_unet`` (any Keras
backend, on a machine that may have no TensorFlow) take their settings, the order of each
epoch's images, their augmented examples and their weight files from here, so the two cannot
drift apart.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mammo_scp.training import augment as aug

if TYPE_CHECKING:
    import keras

    from mammo_scp.models.store import ModelBundle

#: One training image in model space: the image, its lesion masks (N, H, W), their labels.
Triple = tuple[np.ndarray, np.ndarray, list[int]]


@dataclass(frozen=True)
class TrainConfig:
    """What to train on and how long."""

    kind: str  # "unet" | "frcnn"
    data: str
    out: str
    epochs: int = 60
    seed: int = 0
    batch: int = 4
    lr: float = 1e-3
    model_spacing_mm: float = 0.8
    train_shape: tuple[int, int] = (256, 192)
    val_fraction: float = 0.25
    split_seed: int = 0
    mass_repeat: int = 2  # mass images appear this many times per epoch
    insert_prob: float = 0.5
    scale: tuple[float, float] = aug.DEFAULT_SCALE  # zoom range of the augmentation
    val_every: int = 2
    stop_after: int | None = None  # train at most this many epochs in this invocation
    crop: tuple[int, int] | None = None  # train on windows of this size
    crop_lesion_prob: float = 0.7
    hard_negatives: str | None = None  # JSON of mined hard negatives (models mine-negatives)
    hard_negative_prob: float = 0.0  # share of windows centred on one, when not on a mass
    init_weights: str | None = None  # start from a run's .npz or a shipped model folder
    backbone_weights: str | None = None  # detector: ImageNet ResNet50 (models backbone)
    encoder_weights: str | None = None  # U-Net decoder: the detector whose backbone it reads
    ema: float | None = None  # decay of the weight average per step (e.g. 0.998), None: off
    digital_look: float = 0.0  # share of draws shown as a digital mammogram (training.looks)
    digital_variants: int = 2  # renderings of each training image in the digital look
    teacher: str | None = None  # U-Net: a shipped U-Net whose maps the network also learns
    teacher_weight: float = 1.0  # weight of the teacher's term in the loss
    freeze_batch_norm: bool = False  # U-Net: batch norms keep their statistics and weights
    model: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # JSON gives lists; shapes are tuples everywhere else
        object.__setattr__(self, "train_shape", tuple(int(v) for v in self.train_shape))
        object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))
        if self.crop is not None:
            object.__setattr__(self, "crop", tuple(int(v) for v in self.crop))

    def validates_after(self, epoch: int) -> bool:
        """Whether the validation split is measured after ``epoch``: every ``val_every``
        epochs (0: none before the last) and after the last."""
        return epoch == self.epochs or (self.val_every > 0 and epoch % self.val_every == 0)


@dataclass
class TrainState:
    epoch: int = 0
    best: float = -1.0
    best_epoch: int = -1
    history: list[dict[str, float]] = field(default_factory=list)


def epoch_order(has_mass: Sequence[bool], cfg: TrainConfig, rng: np.random.Generator
                ) -> list[int]:
    """One epoch's image indices, shuffled: an image with a mass ``cfg.mass_repeat`` times,
    the rest once; cut to whole batches."""
    order = []
    for i, mass in enumerate(has_mass):
        order += [i] * (cfg.mass_repeat if mass else 1)
    rng.shuffle(order)
    usable = len(order) - len(order) % cfg.batch
    return order[:usable]


def mass_patches(samples: Sequence[Triple]) -> list[aug.MassPatch]:
    """The masses cut from the training images, for insertion into others."""
    return [patch for image, masks, labels in samples if len(masks)
            for patch in aug.cut_mass_patches(image, masks, labels)]


def optimizer(cfg: TrainConfig, steps_per_epoch: int, **adam: Any) -> keras.optimizers.Optimizer:
    """Adam (gradients clipped to norm 5) on a cosine schedule from ``cfg.lr`` down to 2 % of
    it over the whole run; ``adam``: more Adam arguments (``fit_unet``: Keras' weight average)."""
    import keras

    schedule = keras.optimizers.schedules.CosineDecay(
        cfg.lr, decay_steps=max(1, cfg.epochs * steps_per_epoch), alpha=0.02)
    return keras.optimizers.Adam(learning_rate=schedule, clipnorm=5.0, **adam)


@dataclass(frozen=True)
class Looks:
    """Other renderings of the training images (e.g. as digital mammograms): per sample, its
    variants (the same lesions, each preprocessed as the node would), and the masses cut
    from them, inserted only into images of the same look."""

    variants: Sequence[Sequence[Triple]]
    patches: list[aug.MassPatch]


def make_examples(samples: Sequence[Triple], idx: Sequence[int], cfg: TrainConfig,
                  rng: np.random.Generator, patches: list[aug.MassPatch],
                  hard: Sequence[np.ndarray | None] | None = None,
                  looks: Looks | None = None,
                  soft: Sequence[np.ndarray] | None = None) -> list[aug.Example]:
    """The augmented examples of one batch, each cut to a ``cfg.crop`` window if set (all
    augmented first, then all cut: the order the random numbers are drawn in).

    ``hard``: per sample, the masks of its hard negatives (or None), for windows centred on
    them (``cfg.hard_negative_prob``). ``looks``: with ``cfg.digital_look`` > 0, that share
    of the draws takes one of the sample's variants instead (no hard negatives there: they
    were mined on the sample as it is).
    """
    examples = []
    for i in idx:
        image, masks, labels = samples[i]
        pool, hard_i = patches, (None if hard is None else hard[i])
        if looks is not None and cfg.digital_look > 0 and rng.random() < cfg.digital_look:
            variants = looks.variants[i]
            image, masks, labels = variants[int(rng.integers(len(variants)))]
            pool, hard_i = looks.patches, None
        examples.append(aug.augment(image, masks, labels, cfg.train_shape, rng, patches=pool,
                                    spacing_mm=cfg.model_spacing_mm,
                                    insert_prob=cfg.insert_prob, scale=cfg.scale,
                                    hard_regions=hard_i,
                                    soft=None if soft is None else soft[i]))
    if cfg.crop is not None:
        examples = [aug.random_crop(e, cfg.crop, rng, cfg.crop_lesion_prob,
                                    cfg.hard_negative_prob) for e in examples]
    return examples


def teacher_problem(bundle: ModelBundle, spacing_mm: float) -> str | None:
    """Why a shipped model cannot teach a U-Net trained at ``spacing_mm`` (``--teacher``),
    or None."""
    if bundle.name != "unet" or bundle.config.get("encoder", "own") != "own":
        return "not a U-Net with an encoder of its own"
    if abs(bundle.spacing_mm - spacing_mm) > 1e-6:
        return f"it works at {bundle.spacing_mm} mm, this run at {spacing_mm} mm"
    return None


def load_init_weights(path: Path) -> list[np.ndarray]:
    """Weights to start from: a run's ``.npz`` or a shipped model folder
    (``models/unet/1.0.0``, verified against its manifest's sha256)."""
    if path.is_dir():
        from mammo_scp.models.store import load_model_folder

        return load_model_folder(path).weights
    return load_npz(path)


def save_npz(path: Path, arrays: list[np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` atomically (a temporary file beside it, then a rename)."""
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, *arrays)
    os.replace(tmp, path)


def load_npz(path: Path) -> list[np.ndarray]:
    with np.load(path) as z:
        return [z[f"arr_{i}"] for i in range(len(z.files))]


def write_config(out: Path, cfg: TrainConfig, model_cfg: dict[str, Any], **extra: Any) -> None:
    """``out/train_config.json``: the settings, the network's config, and ``extra`` beside
    the settings (``fit_unet`` records its command line and backend there)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(
        {"train": {**asdict(cfg), **extra}, "model": model_cfg}, indent=2))


__all__ = ["Looks", "TrainConfig", "TrainState", "Triple", "epoch_order", "load_init_weights",
           "load_npz", "make_examples", "mass_patches", "optimizer", "save_npz", "teacher_problem",
           "write_config"]
