"""Training loops for the U-Net and the Faster R-CNN: seeded, resumable, with a progress bar.

Checkpoints (weights, optimizer state, epoch, best validation figure) are written to
``<out>/checkpoint/`` after every epoch; ``--resume`` continues from there. The best epoch by
the validation figure and the last epoch are both kept as ``best.npz`` / ``last.npz``.

With ``ema`` set, an exponential moving average of the trainable weights is kept beside them:
validation, ``best.npz`` and ``last.npz`` then use the averaged weights. On so few masses the
raw weights swing from epoch to epoch (whole masses found and lost between epochs); the
average of the last few hundred steps does not.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from mammo_scp.models.frcnn import FasterRCNN, FRCNNConfig, make_anchors, rpn_targets
from mammo_scp.models.store import ModelBundle
from mammo_scp.models.unet import (
    UNetConfig,
    build_decoder,
    build_unet,
    dice_coefficient,
    distillation_loss,
    segmentation_loss,
)
from mammo_scp.training import augment as aug
from mammo_scp.training.data import (
    Sample,
    load_records,
    load_samples,
    make_sample,
    split_by_woman,
)
from mammo_scp.training.recipe import (
    Looks,
    TrainConfig,
    TrainState,
    Triple,
    epoch_order,
    load_init_weights,
    load_npz,
    make_examples,
    mass_patches,
    save_npz,
    teacher_problem,
    write_config,
)
from mammo_scp.training.recipe import optimizer as recipe_optimizer

logger = logging.getLogger(__name__)

MAX_GT = 4


def set_determinism(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow; ask TF for deterministic kernels."""
    keras.utils.set_random_seed(seed)
    try:
        tf.config.experimental.enable_op_determinism()
    except Exception:  # pragma: no cover - older TF
        logger.warning("deterministic ops not available")


def describe_devices() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    return f"GPU: {[g.name for g in gpus]}" if gpus else "CPU only"


def prepare(cfg: TrainConfig) -> tuple[list[Sample], list[Sample], list[aug.MassPatch]]:
    records = load_records(Path(cfg.data))
    train_recs, val_recs = split_by_woman(records, cfg.val_fraction, cfg.split_seed)
    logger.info("%d training images (%d with masses), %d validation images (%d with masses)",
                len(train_recs), sum(r.is_mass for r in train_recs), len(val_recs),
                sum(r.is_mass for r in val_recs))
    train = load_samples(train_recs, cfg.model_spacing_mm)
    val = load_samples(val_recs, cfg.model_spacing_mm)
    return train, val, mass_patches(training_triples(train)[0])


def digital_looks(cfg: TrainConfig, train: list[Sample]) -> Looks | None:
    """``cfg.digital_variants`` renderings of each training image as a digital mammogram
    (settings drawn from the run's seed and the image's place), when ``cfg.digital_look``."""
    if cfg.digital_look <= 0:
        return None
    t0 = time.time()
    variants = [[_triple(make_sample(s.record, cfg.model_spacing_mm,
                                     look_rng=np.random.default_rng([cfg.seed, 7919, i, k])))
                 for k in range(cfg.digital_variants)]
                for i, s in enumerate(train)]
    looks = Looks(variants, mass_patches([t for per in variants for t in per]))
    logger.info("digital look: %d renderings of each of %d images, %d masses to insert, in "
                "%.0f s; %.0f %% of draws", cfg.digital_variants, len(train),
                len(looks.patches), time.time() - t0, 100 * cfg.digital_look)
    return looks


def _triple(sample: Sample) -> Triple:
    """A sample as the recipe takes it: image, lesion masks, labels."""
    return sample.image, sample.lesion_masks, [les.label for les in sample.record.lesions]


def training_triples(train: list[Sample]) -> tuple[list[Triple], list[bool]]:
    """The training samples as the recipe takes them, and which of them hold a mass."""
    return [_triple(s) for s in train], [s.record.is_mass for s in train]


# ------------------------------------------------------------------------------ checkpoints

def save_checkpoint(ckpt: Path, variables: list[Any], optimizer: keras.optimizers.Optimizer,
                    state: TrainState, rng: np.random.Generator,
                    average: WeightAverage | None = None) -> None:
    """Every model variable (weights, BN statistics, dropout seed states), optimizer, RNG,
    and the weight average when there is one (written before ``state.json``, which marks a
    checkpoint complete)."""
    ckpt.mkdir(parents=True, exist_ok=True)
    if average is not None:
        average.save(ckpt / "ema.npz")
    save_npz(ckpt / "variables.npz", [np.asarray(v.numpy()) for v in variables])
    save_npz(ckpt / "optimizer.npz", [np.asarray(v.numpy()) for v in optimizer.variables])
    tmp = ckpt / "state.json.tmp"
    tmp.write_text(json.dumps({"state": asdict(state), "rng": rng.bit_generator.state}))
    os.replace(tmp, ckpt / "state.json")


def load_checkpoint(ckpt: Path, all_variables: list[Any],
                    optimizer: keras.optimizers.Optimizer, variables: list[Any],
                    rng: np.random.Generator) -> TrainState:
    saved_vars = load_npz(ckpt / "variables.npz")
    if len(saved_vars) != len(all_variables):
        raise ValueError(f"checkpoint {ckpt} does not match this model: "
                         f"{len(saved_vars)} variables saved, {len(all_variables)} expected")
    for var, value in zip(all_variables, saved_vars, strict=True):
        var.assign(value)
    optimizer.build(variables)
    for var, value in zip(optimizer.variables, load_npz(ckpt / "optimizer.npz"), strict=True):
        var.assign(value)
    saved = json.loads((ckpt / "state.json").read_text())
    rng.bit_generator.state = saved["rng"]
    st = saved["state"]
    return TrainState(epoch=st["epoch"], best=st["best"], best_epoch=st["best_epoch"],
                      history=st["history"])


class WeightAverage:
    """Exponential moving average of a model's trainable variables.

    ``update`` runs inside the training step; ``swapped_in`` puts the averages into the model
    for validation and saving, and the raw weights back afterwards.
    """

    def __init__(self, variables: list[Any], decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must lie between 0 and 1, got {decay}")
        self.variables = variables
        self.decay = decay
        self.averages = [tf.Variable(np.asarray(v.numpy()), trainable=False)
                         for v in variables]

    def update(self) -> None:
        for avg, var in zip(self.averages, self.variables, strict=True):
            avg.assign(self.decay * avg + (1.0 - self.decay) * var)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        raw = [np.asarray(v.numpy()) for v in self.variables]
        for var, avg in zip(self.variables, self.averages, strict=True):
            var.assign(avg)
        try:
            yield
        finally:
            for var, value in zip(self.variables, raw, strict=True):
                var.assign(value)

    def save(self, path: Path) -> None:
        save_npz(path, [np.asarray(a.numpy()) for a in self.averages])

    def load(self, path: Path) -> None:
        for avg, value in zip(self.averages, load_npz(path), strict=True):
            avg.assign(value)


def _weight_average(cfg: TrainConfig, variables: list[Any], ckpt: Path) -> WeightAverage | None:
    if cfg.ema is None:
        return None
    average = WeightAverage(variables, cfg.ema)
    if (ckpt / "ema.npz").is_file():
        average.load(ckpt / "ema.npz")
    return average


def start_run(cfg: TrainConfig, has_mass: list[bool], variables: list[Any],
              trainable: list[Any]
              ) -> tuple[np.random.Generator, keras.optimizers.Optimizer, TrainState,
                         WeightAverage | None]:
    """What every run starts with: its random numbers, the optimizer on the recipe's
    schedule, the state (from ``<out>/checkpoint`` when there is one: a resume) and the
    weight average if asked for."""
    rng = np.random.default_rng(cfg.seed)
    steps = len(epoch_order(has_mass, cfg, np.random.default_rng(0))) // cfg.batch
    optimizer = recipe_optimizer(cfg, steps)
    ckpt = Path(cfg.out) / "checkpoint"
    state = TrainState()
    if (ckpt / "state.json").is_file():
        state = load_checkpoint(ckpt, variables, optimizer, trainable, rng)
        logger.info("resumed at epoch %d", state.epoch)
    return rng, optimizer, state, _weight_average(cfg, trainable, ckpt)


# ------------------------------------------------------------------------------------ U-Net

def unet_val_dice(model: keras.Model, val: list[Sample]) -> float:
    """Mean hard Dice (threshold 0.5) over validation images with masses, in model space."""
    scores = []
    for s in val:
        if not s.record.is_mass:
            continue
        prob = model(s.image[None, :, :, None], training=False).numpy()[0, :, :, 0]
        truth = s.lesion_masks.max(axis=0) >= 0.5
        pred = prob >= 0.5
        scores.append(2.0 * (truth & pred).sum() / max(truth.sum() + pred.sum(), 1))
    return float(np.mean(scores)) if scores else 0.0


def teacher_maps(cfg: TrainConfig, train: list[Sample]) -> list[np.ndarray] | None:
    """``cfg.teacher``'s probability map of each training sample (a shipped U-Net folder,
    verified; its networks' maps averaged, each with its up/down mirror when its manifest
    says ``tta_vflip``), for the network to learn beside the truth: distillation of an
    ensemble into one network."""
    if not cfg.teacher:
        return None
    from mammo_scp.models.analyzer import ensemble_map
    from mammo_scp.models.store import load_model_folder

    bundle = load_model_folder(Path(cfg.teacher))
    if problem := teacher_problem(bundle, cfg.model_spacing_mm):
        raise ValueError(f"teacher {cfg.teacher}: {problem}")
    mirror = bool(bundle.thresholds.get("tta_vflip", 0.0))
    nets = []
    for weights in bundle.members:
        net = build_unet(UNetConfig.from_dict(bundle.config))
        net.set_weights(weights)
        nets.append(tf.function(lambda x, net=net: net(x, training=False),
                                input_signature=[tf.TensorSpec([None, None, None, 1])]))
    t0 = time.time()
    maps = [ensemble_map(nets, sample.image, mirror) for sample in train]
    logger.info("teacher %s %s: maps of %d training images (%d networks%s) in %.0f s",
                bundle.name, bundle.version, len(maps), len(nets), ", mirrored" if mirror else "",
                time.time() - t0)
    return maps


def load_detector(path: Path) -> FasterRCNN:
    """A trained detector (training form): a shipped folder (``models/frcnn/2.0.0``, verified)
    or a run folder (its ``last.npz``)."""
    from mammo_scp.models.store import MANIFEST, load_model_folder

    if (path / MANIFEST).is_file():
        bundle = load_model_folder(path)
        if bundle.name != "frcnn":
            raise ValueError(f"{path} is not a detector (frcnn)")
        net = FasterRCNN(FRCNNConfig.from_dict(bundle.config))
        net.set_weights(bundle.weights)
        return net
    run_config = path / "train_config.json"
    if not run_config.is_file():
        raise ValueError(f"{path} is neither a shipped detector nor a detector's run folder")
    net = FasterRCNN(FRCNNConfig.from_dict(json.loads(run_config.read_text())["model"]))
    net.set_weights(load_npz(path / "last.npz"))
    return net


def shared_segmenter(detector: FasterRCNN, ucfg: UNetConfig) -> tuple[keras.Model, keras.Model]:
    """The segmenter on the detector's backbone: image -> frozen backbone (inference mode) ->
    a new decoder. Returns the whole network and the decoder (all that trains and ships)."""
    taps = detector.backbone_with_taps()
    taps.trainable = False
    decoder = build_decoder(ucfg)
    image = keras.Input((None, None, 1), name="image")
    features = taps(image, training=False)
    model = keras.Model(image, decoder(features[3:]), name="shared_segmenter")
    return model, decoder


def train_unet(cfg: TrainConfig) -> Path:
    set_determinism(cfg.seed)
    logger.info("training U-Net on %s (%s)", cfg.data, describe_devices())
    train, val, patches = prepare(cfg)
    ucfg = UNetConfig.from_dict(cfg.model)
    if ucfg.encoder == "detector":
        if not cfg.encoder_weights:
            raise ValueError("a decoder on the detector's backbone needs the detector "
                             "(--encoder)")
        detector = load_detector(Path(cfg.encoder_weights))
        channels = tuple(int(detector.backbone.get_layer(name).output.shape[-1])
                         for name in detector.tap_names())
        ucfg = UNetConfig.from_dict({**ucfg.to_dict(), "encoder_channels": channels})
        model, shipped = shared_segmenter(detector, ucfg)
        logger.info("decoder on the backbone of %s (taps %s)", cfg.encoder_weights, channels)
    else:
        model = shipped = build_unet(ucfg)
    if ucfg.encoder == "resnet50":  # its own ResNet50, from ImageNet, trained with the decoder
        from mammo_scp.models.frcnn import FRCNNConfig, freeze_resnet
        from mammo_scp.training.backbone import init_detector_backbone, load_backbone

        encoder = FRCNNConfig.from_dict(ucfg.encoder_config)
        if cfg.backbone_weights and not cfg.init_weights:
            n = init_detector_backbone(model, load_backbone(Path(cfg.backbone_weights)),
                                       encoder.input_scale[1])
            logger.info("encoder: %d ResNet50 layers from %s", n, cfg.backbone_weights)
        freeze_resnet(model, encoder)
    if cfg.init_weights:
        shipped.set_weights(load_init_weights(Path(cfg.init_weights)))
        logger.info("initialised from %s", cfg.init_weights)
    if cfg.freeze_batch_norm:  # fine-tuning on windows must not move whole-image statistics
        frozen = [layer for layer in shipped.layers
                  if isinstance(layer, keras.layers.BatchNormalization)]
        for layer in frozen:
            layer.trainable = False
        logger.info("%d batch norms frozen (their statistics and weights)", len(frozen))
    triples, has_mass = training_triples(train)
    looks = digital_looks(cfg, train)
    soft = teacher_maps(cfg, train)
    rng, optimizer, state, average = start_run(cfg, has_mass, list(model.variables),
                                               model.trainable_variables)
    out = Path(cfg.out)
    ckpt = out / "checkpoint"

    @tf.function(reduce_retracing=True)  # type: ignore[untyped-decorator]
    def step(x: tf.Tensor, y: tf.Tensor, t: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            pred = model(x, training=True)
            loss = segmentation_loss(y, pred)
            if soft is not None:  # the truth wins where the teacher is lower (inserted masses)
                loss += cfg.teacher_weight * distillation_loss(tf.maximum(t, y), pred)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        if average is not None:
            average.update()
        return loss, dice_coefficient(y, pred)

    write_config(out, cfg, ucfg.to_dict())
    first_epoch = state.epoch
    while state.epoch < cfg.epochs:
        order = epoch_order(has_mass, cfg, rng)
        losses = []
        t0 = time.time()
        bar = tqdm(range(0, len(order), cfg.batch), desc=f"unet epoch {state.epoch + 1}",
                   mininterval=5.0, leave=False)
        for start in bar:
            ex = make_examples(triples, order[start:start + cfg.batch], cfg, rng, patches,
                               looks=looks, soft=soft)
            x = np.stack([e.image for e in ex])[..., None]
            y = np.stack([e.mask for e in ex])[..., None]
            t = y if soft is None else np.stack([e.soft for e in ex if e.soft is not None])[
                ..., None]
            loss, _ = step(tf.constant(x), tf.constant(y), tf.constant(t))
            losses.append(float(loss))
            bar.set_postfix(loss=f"{np.mean(losses):.3f}", refresh=False)
        state.epoch += 1
        record: dict[str, float] = {"epoch": state.epoch, "loss": float(np.mean(losses)),
                                    "seconds": time.time() - t0}
        with average.swapped_in() if average is not None else nullcontext():
            if cfg.validates_after(state.epoch):
                dice = unet_val_dice(model, val)
                record["val_dice"] = dice
                if dice > state.best:
                    state.best, state.best_epoch = dice, state.epoch
                    save_npz(out / "best.npz", shipped.get_weights())
            save_npz(out / "last.npz", shipped.get_weights())
        state.history.append(record)
        logger.info("unet %s", json.dumps(record))
        save_checkpoint(ckpt, list(model.variables), optimizer, state, rng, average)
        if cfg.stop_after is not None and state.epoch - first_epoch >= cfg.stop_after:
            break
    return out


# ---------------------------------------------------------------------------------- Faster R-CNN

def frcnn_batch(examples: list[aug.Example], frc: FRCNNConfig, anchors: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Stack examples into images, RPN targets and padded truth boxes."""
    b = len(examples)
    images = np.stack([e.image for e in examples])[..., None]
    rpn_l = np.zeros((b, len(anchors)), np.float32)
    rpn_d = np.zeros((b, len(anchors), 4), np.float32)
    gt_b = np.zeros((b, MAX_GT, 4), np.float32)
    gt_l = np.zeros((b, MAX_GT), np.int32)
    gt_v = np.zeros((b, MAX_GT), bool)
    for i, e in enumerate(examples):
        boxes, labels = e.boxes[:MAX_GT], e.labels[:MAX_GT]
        rpn_l[i], rpn_d[i] = rpn_targets(frc, anchors, boxes, rng)
        gt_b[i, :len(boxes)] = boxes
        gt_l[i, :len(boxes)] = labels
        gt_v[i, :len(boxes)] = True
    return images, rpn_l, rpn_d, gt_b, gt_l, gt_v


def mine_hard_negatives(bundle: ModelBundle, data: Path, min_score: float = 0.1,
                        per_image: int = 5) -> dict[str, Any]:
    """Run a shipped detector on the training women of its own split and keep the findings
    that hit no mass: the tissue it takes for a mass (hard negatives), as model-space boxes.

    A finding hits a mass when its centre lies on the mass's truth mask, the evaluation's
    rule. At most ``per_image`` per image, the highest scores first. An ensemble is mined
    with its first network.
    """
    split = bundle.manifest["training"]["split"]
    records = load_records(data)
    train_recs, _ = split_by_woman(records, split["val_fraction"], split["seed"])
    net = FasterRCNN(FRCNNConfig.from_dict(bundle.config))
    net.set_weights(bundle.weights)
    net = net.for_inference()
    images: dict[str, list[list[float]]] = {}
    for sample in load_samples(train_recs, bundle.spacing_mm):
        boxes, scores, _ = net.detect_one(tf.constant(sample.image[None, :, :, None]))
        found = []
        for box, score in zip(np.asarray(boxes), np.asarray(scores), strict=True):
            cx = int(np.clip((box[0] + box[2]) / 2, 0, sample.image.shape[1] - 1))
            cy = int(np.clip((box[1] + box[3]) / 2, 0, sample.image.shape[0] - 1))
            on_mass = len(sample.lesion_masks) and sample.lesion_masks[:, cy, cx].max() >= 0.5
            if score >= min_score and not on_mass:
                found.append([round(float(v), 1) for v in box] + [round(float(score), 4)])
        if found:
            images[sample.record.key] = found[:per_image]
    logger.info("%d hard negatives on %d of %d training images", sum(map(len, images.values())),
                len(images), len(train_recs))
    return {"detector": f"{bundle.name} {bundle.version}", "spacing_mm": bundle.spacing_mm,
            "min_score": min_score, "per_image": per_image,
            "box": "x0, y0, x1, y1 in model pixels, score", "images": images}


def hard_negative_masks(cfg: TrainConfig, train: list[Sample]) -> list[np.ndarray | None]:
    """Per training sample, a filled box mask for each of its mined hard negatives (uint8:
    hundreds of image-sized masks stay in memory for the whole run)."""
    mined = json.loads(Path(str(cfg.hard_negatives)).read_text())
    if abs(float(mined["spacing_mm"]) - cfg.model_spacing_mm) > 1e-6:
        raise ValueError(f"{cfg.hard_negatives} was mined at {mined['spacing_mm']} mm; this run "
                         f"trains at {cfg.model_spacing_mm} mm")
    masks: list[np.ndarray | None] = []
    for sample in train:
        boxes = mined["images"].get(sample.record.key, [])
        if not boxes:
            masks.append(None)
            continue
        m = np.zeros((len(boxes),) + sample.image.shape, np.uint8)
        for k, (x0, y0, x1, y1, _) in enumerate(boxes):
            m[k, int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = 1
        masks.append(m)
    logger.info("windows on hard negatives: %d of %d training images have some (p=%.2f)",
                sum(m is not None for m in masks), len(train), cfg.hard_negative_prob)
    return masks


def frcnn_val_sensitivity(net: FasterRCNN, val: list[Sample], fp_rate: float = 1.0) -> float:
    """Model-space FROC sensitivity at ``fp_rate`` false positives per image."""
    from mammo_scp.training.evaluate import froc_points

    per_image = []
    for s in val:
        boxes, scores, _ = net.detect(tf.constant(s.image[None, :, :, None]))[0]
        circles = []
        for m in s.lesion_masks:
            ys, xs = np.nonzero(m >= 0.5)
            if len(xs):
                circles.append(((xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2,
                                (xs.max() + 1 - xs.min()) / 2))
        per_image.append((boxes.numpy(), scores.numpy(), circles))
    sens = froc_points(per_image, (fp_rate,))
    return sens[0]


def train_frcnn(cfg: TrainConfig) -> Path:
    set_determinism(cfg.seed)
    logger.info("training Faster R-CNN on %s (%s)", cfg.data, describe_devices())
    train, val, patches = prepare(cfg)
    frc = FRCNNConfig.from_dict(cfg.model)
    net = FasterRCNN(frc)
    if cfg.backbone_weights:
        from mammo_scp.training.backbone import init_detector_backbone, load_backbone

        n = init_detector_backbone(net.backbone, load_backbone(Path(cfg.backbone_weights)),
                                   frc.input_scale[1])
        logger.info("backbone: %d ResNet50 layers from %s", n, cfg.backbone_weights)
    if cfg.init_weights:
        net.set_weights(load_init_weights(Path(cfg.init_weights)))
        logger.info("initialised from %s", cfg.init_weights)
    net.freeze()
    window = (int(cfg.crop[0]), int(cfg.crop[1])) if cfg.crop is not None else cfg.train_shape
    anchors = make_anchors(frc, window[0] // frc.stride, window[1] // frc.stride)
    triples, has_mass = training_triples(train)
    hard = hard_negative_masks(cfg, train) if cfg.hard_negatives else None
    looks = digital_looks(cfg, train)
    rng, optimizer, state, average = start_run(cfg, has_mass, net.variables,
                                               net.trainable_variables)
    out = Path(cfg.out)
    ckpt = out / "checkpoint"

    @tf.function(reduce_retracing=True)  # type: ignore[untyped-decorator]
    def step(images: tf.Tensor, rpn_l: tf.Tensor, rpn_d: tf.Tensor, gt_b: tf.Tensor,
             gt_l: tf.Tensor, gt_v: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            parts = net.losses(images, rpn_l, rpn_d, gt_b, gt_l, gt_v, training=True, seed=seed)
            total = tf.add_n(list(parts.values()))
        variables = net.trainable_variables
        grads = tape.gradient(total, variables)
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        if average is not None:
            average.update()
        return {**parts, "total": total}

    write_config(out, cfg, frc.to_dict())
    first_epoch = state.epoch
    while state.epoch < cfg.epochs:
        order = epoch_order(has_mass, cfg, rng)
        sums: dict[str, float] = {}
        t0 = time.time()
        bar = tqdm(range(0, len(order), cfg.batch), desc=f"frcnn epoch {state.epoch + 1}",
                   mininterval=5.0, leave=False)
        n = 0
        for start in bar:
            ex = make_examples(triples, order[start:start + cfg.batch], cfg, rng, patches, hard,
                               looks)
            batch = frcnn_batch(ex, frc, anchors, rng)
            seed = rng.integers(0, 2**31 - 1, size=2).astype(np.int32)
            parts = step(*(tf.constant(a) for a in batch), tf.constant(seed))
            n += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            bar.set_postfix(loss=f"{sums['total'] / n:.3f}", refresh=False)
        state.epoch += 1
        record: dict[str, float] = {"epoch": state.epoch, "seconds": time.time() - t0,
                                    **{k: v / max(n, 1) for k, v in sums.items()}}
        with average.swapped_in() if average is not None else nullcontext():
            if cfg.validates_after(state.epoch):
                sens = frcnn_val_sensitivity(net, val)
                record["val_sens_at_1fp"] = sens
                if sens >= state.best:
                    state.best, state.best_epoch = sens, state.epoch
                    save_npz(out / "best.npz", net.get_weights())
            save_npz(out / "last.npz", net.get_weights())
        state.history.append(record)
        logger.info("frcnn %s", json.dumps(record))
        save_checkpoint(ckpt, net.variables, optimizer, state, rng, average)
        if cfg.stop_after is not None and state.epoch - first_epoch >= cfg.stop_after:
            break
    return out


def train(cfg: TrainConfig) -> Path:
    if cfg.kind == "unet":
        return train_unet(cfg)
    if cfg.kind == "frcnn":
        return train_frcnn(cfg)
    raise ValueError(f"unknown model kind {cfg.kind!r}: use 'unet' or 'frcnn'")


__all__ = ["TrainConfig", "mine_hard_negatives", "train", "train_frcnn", "train_unet"]
