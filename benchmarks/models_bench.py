"""Timed runs of the shipped models: ms/image, peak RSS, achieved GFLOP/s vs a large matmul.

Run from the repository root: ``python benchmarks/models_bench.py [--models models]
[--repeat 10] [--json out.json]``. Prints figures; never part of the test suite's pass/fail.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tensorflow as tf  # noqa: E402
from tensorflow.python.framework.convert_to_constants import (  # noqa: E402
    convert_variables_to_constants_v2,
)

from mammo_scp.models.analyzer import Analyzer  # noqa: E402
from mammo_scp.pectoral import find_pectoral  # noqa: E402
from mammo_scp.preprocess import (  # noqa: E402
    preprocess_array,
    preprocess_dataset,
    presentation_image,
)
from tests.support.mg import add_mass, breast_phantom, make_mg  # noqa: E402

logger = logging.getLogger("models_bench")
MIAS = REPO.parent / "shared" / "data" / "mias-train" / "mdb006.png"
#: a mini-MIAS image with a mass (the detector reports it): a study's view with a finding
MIAS_MASS = REPO.parent / "shared" / "data" / "mias-train" / "mdb005.png"


def graph_flops(fn: Any, shape: tuple[int, ...]) -> float:
    """Floating-point operations of one call, counted by the TF profiler on the frozen graph."""
    concrete = tf.function(fn).get_concrete_function(tf.TensorSpec(shape, tf.float32))
    frozen = convert_variables_to_constants_v2(concrete)
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    prof = tf.compat.v1.profiler.profile(graph=frozen.graph, options=opts)
    return float(prof.total_float_ops)


def matmul_gflops(dtype: tf.DType, n: int = 4096, repeat: int = 5) -> float:
    a = tf.random.normal((n, n), dtype=tf.float32)
    a = tf.cast(a, dtype)
    b = tf.cast(tf.random.normal((n, n)), dtype)
    mm = tf.function(lambda x, y: tf.matmul(x, y))
    mm(a, b).numpy()
    t0 = time.perf_counter()
    for _ in range(repeat):
        mm(a, b).numpy()
    return 2.0 * n ** 3 * repeat / (time.perf_counter() - t0) / 1e9


def time_ms(fn: Any, repeat: int) -> float:
    fn()
    fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return 1000.0 * (time.perf_counter() - t0) / repeat


def inputs() -> dict[str, tuple[np.ndarray, float]]:
    import cv2

    out: dict[str, tuple[np.ndarray, float]] = {}
    mias = cv2.imread(str(MIAS), cv2.IMREAD_GRAYSCALE) if MIAS.is_file() else None
    if mias is not None:
        out["mini-MIAS 1024x1024 @0.2mm"] = (np.asarray(mias), 0.2)
    ffdm = add_mass(breast_phantom(4096, 3328, "R", seed=1), (2000, 800), 110)
    out["FFDM 4096x3328 @0.07mm"] = (ffdm, 0.07)
    return out


def study_inputs() -> dict[str, tuple[tuple[np.ndarray, float], tuple[np.ndarray, float]]]:
    """Per image kind, a view without a mass and one with a mass: a 4-view study with one
    mass is three of the first and one of the second."""
    import cv2

    out = {}
    normal = cv2.imread(str(MIAS), cv2.IMREAD_GRAYSCALE) if MIAS.is_file() else None
    mass = cv2.imread(str(MIAS_MASS), cv2.IMREAD_GRAYSCALE) if MIAS_MASS.is_file() else None
    if normal is not None and mass is not None:
        out["mini-MIAS"] = ((np.asarray(normal), 0.2), (np.asarray(mass), 0.2))
    out["FFDM 4096x3328"] = ((breast_phantom(4096, 3328, "R", seed=2), 0.07),
                             (add_mass(breast_phantom(4096, 3328, "R", seed=1), (2000, 800),
                                       110), 0.07))
    return out


#: Every view of a timed study is taken as oblique: where the pectoral muscle is excluded
#: (exclude_pectoral), it is then looked for on each (mammo_scp.pectoral), the dearer case
#: (a real study has two CC views).
STUDY_VIEW = "MLO"


def study_times(an: Analyzer, repeat: int) -> dict[str, Any]:
    """Model time of a 4-view study with one mass (3 views without, 1 with), per image
    kind: where the U-Net runs only around findings, a view without one costs the
    detector alone."""
    out: dict[str, Any] = {}
    for name, views in study_inputs().items():
        per_view = []
        for pixels, spacing in views:
            runs = [an.analyze_array(pixels, spacing, view=STUDY_VIEW)
                    for _ in range(max(3, repeat // 2))][1:]
            per_view.append({
                "analyze_ms": round(float(np.median([r.timings_ms["total"] for r in runs])), 1),
                "unet_ms": round(float(np.median([r.timings_ms["unet"] for r in runs])), 1),
                "frcnn_ms": round(float(np.median([r.timings_ms["frcnn"] for r in runs])), 1),
                "findings": len(runs[-1].findings)})
        out[name] = {"view_without_mass": per_view[0], "view_with_mass": per_view[1],
                     "four_view_study_one_mass_ms": round(
                         3 * per_view[0]["analyze_ms"] + per_view[1]["analyze_ms"], 1)}
    return out


def dicom_preprocessing(image: tuple[np.ndarray, float], model_spacing_mm: float,
                        repeat: int) -> dict[str, float]:
    """What a site's image costs before the models: the same full-field phantom as a
    windowed 12-bit MG dataset (decoded once; pydicom keeps the pixels), through the
    presentation LUTs alone and through all of the node's preprocessing."""
    pixels, spacing = image
    ds = make_mg("R", "CC", study_uid=generate_uid(), pixels=pixels.astype(np.uint16),
                 bits_stored=12, spacing_mm=spacing)
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    return {
        "presentation": round(time_ms(lambda: presentation_image(ds), repeat), 1),
        "preprocess_dataset": round(time_ms(lambda: preprocess_dataset(
            ds, model_spacing_mm=model_spacing_mm), repeat), 1),
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def bench(models: Path, repeat: int, precisions: tuple[str, ...] = ("fp32", "bf16")
          ) -> dict[str, Any]:
    from mammo_scp.models.analyzer import cpu_flags

    flags = cpu_flags()
    report: dict[str, Any] = {
        "cpu": {"model": _cpu_model(), "cores": len(os.sched_getaffinity(0)),
                # oneDNN's instruction-set cap (ONEDNN_MAX_CPU_ISA=AVX2 runs an AVX-512 or
                # AMX machine's convolutions as a plain AVX2 server would)
                "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "(none)"),
                "flags": {f: f in flags for f in ("avx2", "fma", "avx512f", "avx512_bf16",
                                                   "amx_tile", "amx_bf16")}},
        "matmul_gflops": {}, "precisions": {}}
    for precision in precisions:
        report["matmul_gflops"][precision] = matmul_gflops(
            tf.float32 if precision == "fp32" else tf.bfloat16)
    analyzers = {p: Analyzer.load(models, p) for p in precisions}
    images = inputs()
    for precision, an in analyzers.items():
        per: dict[str, Any] = {}
        for name, (pixels, spacing) in images.items():
            pre = preprocess_array(pixels, spacing, model_spacing_mm=an.spacing_mm)
            img = pre.image
            shape = (1, img.shape[0], img.shape[1], 1)
            if an.shared_backbone:  # one backbone pass: the split the analyzer measures
                splits = [an.segment_and_detect(img)[2] for _ in range(repeat + 2)][2:]
                unet_ms = float(np.median([t["unet"] for t in splits]))
                det_ms = float(np.median([t["frcnn"] for t in splits]))
            else:
                unet_ms = time_ms(lambda a=an, i=img: a.segment(i), repeat)
                det_ms = time_ms(lambda a=an, i=img: a.detect(i), repeat)
            pre_ms = time_ms(lambda a=an, p=pixels, s=spacing: preprocess_array(
                p, s, model_spacing_mm=a.spacing_mm,
                view=STUDY_VIEW if a.exclude_pectoral else None), repeat)
            full_ms = time_ms(lambda a=an, p=pixels, s=spacing: a.analyze_array(
                p, s, view=STUDY_VIEW), max(2, repeat // 2))
            rows, cols = pre.transform.resized_shape  # what the search costs where it runs
            pectoral_ms = time_ms(lambda a=an, i=img[:rows, :cols]: find_pectoral(
                i, a.spacing_mm), repeat)
            # a shipped ensemble runs every member, each twice with the mirror (tta_vflip):
            # its work is the sum of those passes
            passes = len(an.unets) * (2 if an.mask_tta else 1)
            if an.shared_backbone:  # the decoder's work: decoder and backbone less backbone
                taps = an.detector.backbone_with_taps()
                unet_flops = graph_flops(
                    lambda x, t=taps, d=an.unet: d(t(x)[3:], training=False), shape
                ) - graph_flops(lambda x, t=taps: t(x)[0], shape)
            else:
                unet_flops = passes * graph_flops(lambda x, a=an: a.unet(x, training=False),
                                                  shape)
            bb_flops = graph_flops(lambda x, a=an: a.detector.backbone(x, training=False)[1],
                                   shape)
            cfg = an.detector.cfg
            channels = int(an.detector.backbone.outputs[0].shape[-1])
            first = (channels * cfg.head_reduce + cfg.head_reduce * cfg.head_hidden
                     if cfg.head_reduce else channels * cfg.head_hidden)
            head_flops = cfg.rpn_post_nms_test * 2.0 * (
                cfg.roi_size ** 2 * first + cfg.head_hidden ** 2 + cfg.head_hidden * 7)
            det_flops = len(an.detectors) * (bb_flops + head_flops)
            per[name] = {
                "model_input": list(img.shape),
                "members": {"unet": len(an.unets), "frcnn": len(an.detectors)},
                "unet_passes": passes,
                "preprocess_ms": round(pre_ms, 1),
                "pectoral_search_ms": round(pectoral_ms, 1),
                "unet_ms": round(unet_ms, 1),
                "frcnn_ms": round(det_ms, 1),
                "analyze_ms": round(full_ms, 1),
                "four_view_study_ms": round(4 * full_ms, 1),
                "shared_backbone": an.shared_backbone,
                "unet_gflop": round(unet_flops / 1e9, 3),
                "frcnn_gflop": round(det_flops / 1e9, 3),
                "unet_gflops_per_s": round(unet_flops / unet_ms / 1e6, 2),
                "frcnn_gflops_per_s": round(det_flops / det_ms / 1e6, 2),
            }
        per["study"] = study_times(an, repeat)
        report["precisions"][precision] = per
    report["full_field_dicom_ms"] = dicom_preprocessing(images["FFDM 4096x3328 @0.07mm"],
                                                        analyzers["fp32"].spacing_mm, repeat)
    report["peak_rss_mib_both_loaded"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
    if set(analyzers) != {"fp32", "bf16"}:
        return report
    # accuracy of bf16 against fp32 on the same input (the full-field phantom has a mass)
    pixels, spacing = images["FFDM 4096x3328 @0.07mm"]
    pre = preprocess_array(pixels, spacing, model_spacing_mm=analyzers["fp32"].spacing_mm)
    p32 = analyzers["fp32"].segment(pre.image)
    p16 = analyzers["bf16"].segment(pre.image)
    m32, m16 = p32 >= 0.5, p16 >= 0.5
    d32 = analyzers["fp32"].detect(pre.image)
    d16 = analyzers["bf16"].detect(pre.image)
    report["bf16_vs_fp32"] = {
        "unet_max_abs_prob_diff": float(np.abs(p32 - p16).max()),
        "unet_mask_dice": float(2 * (m32 & m16).sum() / (m32.sum() + m16.sum()))
        if m32.any() or m16.any() else 1.0,
        "unet_mask_pixels_fp32": int(m32.sum()),
        "frcnn_top_score_fp32": float(d32.scores.max()) if len(d32.scores) else 0.0,
        "frcnn_top_score_bf16": float(d16.scores.max()) if len(d16.scores) else 0.0,
    }
    report["peak_rss_mib_both_loaded"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
    report["threads"] = {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                         "inter_op": tf.config.threading.get_inter_op_parallelism_threads()}
    return report


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"],
                        default=["fp32", "bf16"],
                        help="bf16 only where the CPU runs it natively (AMX or AVX512_BF16): "
                             "elsewhere TensorFlow emulates it, many times slower")
    args = parser.parse_args()
    report = bench(args.models, args.repeat, tuple(args.precision))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
