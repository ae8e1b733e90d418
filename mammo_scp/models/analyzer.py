"""Inference on one image: preprocess, U-Net and Faster R-CNN, results in source pixels."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import keras
import numpy as np
import tensorflow as tf
from pydicom.dataset import Dataset

from mammo_scp.models.fold import fold_batch_norm
from mammo_scp.models.frcnn import FasterRCNN, FRCNNConfig, box_iou_np
from mammo_scp.models.store import ModelBundle, ModelStoreError, load_model
from mammo_scp.models.unet import UNetConfig, build_decoder, build_unet
from mammo_scp.pectoral import PectoralEdge
from mammo_scp.preprocess import (
    FlipMode,
    Preprocessed,
    Transform,
    preprocess_array,
    preprocess_dataset,
)
from mammo_scp.results import Box, Finding, ImageAnalysis, ModelInfo

logger = logging.getLogger(__name__)

#: The Keras dtype policy of the inference networks of each precision. In bf16 the weights
#: are held in bfloat16 too: under ``mixed_bfloat16`` Keras keeps them in float32 and casts
#: each to bfloat16 on every call (~4 ms an image for the two networks here), the same
#: rounding as holding them in bfloat16, which gives the same outputs bit for bit.
PRECISIONS = {"fp32": "float32", "bf16": "bfloat16"}
PAD_MULTIPLE = 32
#: The IoU at which two member detectors' boxes count as one finding (an ensemble's fusion).
FUSION_IOU = 0.3
MASK_MODES = ("all", "largest", "with_finding", "finding_or_confident", "near_candidates")
#: mask modes in which the U-Net runs only on windows around the detector's boxes
GATED_MASK_MODES = ("with_finding", "near_candidates")
#: CPU flags (Linux /proc/cpuinfo) with which bfloat16 runs natively: AMX, or AVX-512 BF16.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The flags of the first CPU in ``cpuinfo`` (empty where there is no such file)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def resolve_precision(setting: str, flags: set[str] | None = None) -> tuple[str, str]:
    """The precision to run (``fp32`` or ``bf16``) for a setting, and why.

    ``auto`` is bf16 on a CPU that runs it natively (AMX or AVX512_BF16: the same
    validation figures, and 1.4-1.6x faster on the 2-core machines measured), else
    fp32: without those instructions bfloat16 has no hardware support.
    """
    if setting in PRECISIONS:
        return setting, "as configured"
    if setting != "auto":
        raise ValueError(f"precision must be auto or one of {sorted(PRECISIONS)}, "
                         f"got {setting!r}")
    found = [flag for flag in BF16_FLAGS if flag in (cpu_flags() if flags is None else flags)]
    if found:
        return "bf16", f"auto: the CPU has {' and '.join(found)}"
    return "fp32", "auto: the CPU has neither AMX nor AVX512_BF16"


def mask_regions(prob: np.ndarray, threshold: float, min_area_px: float,
                 pectoral: PectoralEdge | None = None
                 ) -> tuple[np.ndarray, list[tuple[int, float]]]:
    """The U-Net map's regions at ``threshold`` of at least ``min_area_px``, less those whose
    centroid lies in the ``pectoral`` muscle: the label image and, per region, its label and
    peak probability, the largest region first."""
    binary = (prob >= threshold).astype(np.uint8)
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(binary, connectivity=8)
    regions = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= min_area_px
               and (pectoral is None or pectoral.depth(*(centroids[i] + 0.5)) <= 0)]
    regions.sort(key=lambda i: -int(stats[i, cv2.CC_STAT_AREA]))

    def peak(i: int) -> float:  # within the region's bounding box only
        x, y, w, h = stats[i, :4]
        window = (slice(y, y + h), slice(x, x + w))
        return float(prob[window][labels[window] == i].max())

    return labels, [(i, peak(i)) for i in regions]


def postprocess_mask(prob: np.ndarray, threshold: float, mode: str, min_area_px: float,
                     boxes: np.ndarray, confident: float = 1.0,
                     pectoral: PectoralEdge | None = None) -> np.ndarray:
    """Model-space mask from the U-Net map: drop small regions and those centred in the
    ``pectoral`` muscle and, per ``mode``, keep all
    regions, only the largest, only those touching a reported finding's box, or those and
    also the largest when its peak probability reaches ``confident``
    (``finding_or_confident``: the segmenter confident on its own). ``near_candidates``
    keeps the largest, as ``largest`` does, of a map computed only around the detector's
    candidates (:meth:`Analyzer.segment_windows`)."""
    if mode not in MASK_MODES:
        raise ValueError(f"mask mode must be one of {MASK_MODES}, got {mode!r}")
    labels, peaks = mask_regions(prob, threshold, min_area_px, pectoral)
    keep = np.zeros(int(labels.max()) + 1, dtype=bool)
    if mode == "all":
        keep[[i for i, _ in peaks]] = True
    elif mode in ("largest", "near_candidates") and peaks:
        keep[peaks[0][0]] = True
    elif mode in ("with_finding", "finding_or_confident"):
        candidates = {i for i, _ in peaks}
        for x0, y0, x1, y1 in boxes:
            r0, r1 = max(int(np.floor(y0)), 0), max(int(np.ceil(y1)), 0)
            c0, c1 = max(int(np.floor(x0)), 0), max(int(np.ceil(x1)), 0)
            keep[[i for i in np.unique(labels[r0:r1, c0:c1]) if i in candidates]] = True
        if mode == "finding_or_confident" and peaks and peaks[0][1] >= confident:
            keep[peaks[0][0]] = True
    keep[0] = False
    return np.asarray(keep[labels], dtype=np.float32)


#: Context (model pixels) around a reported finding's box that the U-Net sees when it runs
#: only where the detector found something (mask mode ``with_finding``): 64 px at 0.4 mm is
#: 26 mm, past the receptive field that decides a pixel inside the box.
WINDOW_MARGIN_PX = 64


def finding_windows(boxes: np.ndarray, shape: tuple[int, int], margin: int = WINDOW_MARGIN_PX,
                    multiple: int = PAD_MULTIPLE) -> list[tuple[int, int, int, int]]:
    """Windows ``(row0, col0, row1, col1)`` of a model-space image of ``shape`` that cover
    each box with ``margin`` around it, their corners on multiples of ``multiple`` (where
    the U-Net's poolings line up with the whole image's); overlapping windows are merged."""
    rows, cols = shape
    windows: list[tuple[int, int, int, int]] = []  # never two that overlap
    for x0, y0, x1, y1 in np.asarray(boxes, np.float64).reshape(-1, 4):
        w = (max(0, int(np.floor((y0 - margin) / multiple)) * multiple),
             max(0, int(np.floor((x0 - margin) / multiple)) * multiple),
             min(rows, int(np.ceil((y1 + margin) / multiple)) * multiple),
             min(cols, int(np.ceil((x1 + margin) / multiple)) * multiple))
        if w[2] <= w[0] or w[3] <= w[1]:
            continue
        # absorb every window it overlaps, again as it grows
        while hit := next((o for o in windows if o[0] < w[2] and w[0] < o[2]
                           and o[1] < w[3] and w[1] < o[3]), None):
            windows.remove(hit)
            w = (min(w[0], hit[0]), min(w[1], hit[1]), max(w[2], hit[2]), max(w[3], hit[3]))
        windows.append(w)
    return windows


#: A detection is dropped when less than this share of its box lies on the image the
#: detector saw (the rest is the zero padding to a multiple of the network's stride).
MIN_SHARE_ON_IMAGE = 0.5
#: Smallest side (source pixels) of a finding's box once clipped to the breast region.
MIN_BOX_SIDE_PX = 1.0


def breast_box(box: np.ndarray, transform: Transform) -> tuple[float, float, float, float] | None:
    """A model-space detection box as a source box clipped to the breast region the
    preprocessing cropped; None for a detection that lies mostly in the zero padding
    (:data:`MIN_SHARE_ON_IMAGE`) or that is left with a side under :data:`MIN_BOX_SIDE_PX`.

    The padding holds no image, so nothing found there is a finding; a box reaching past
    the crop is cut at its edge, so every box lies on the image (the encoders require it).
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    area = max(x1 - x0, 0.0) * max(y1 - y0, 0.0)
    rows, cols = transform.resized_shape
    on_image = (max(min(x1, cols) - max(x0, 0.0), 0.0)
                * max(min(y1, rows) - max(y0, 0.0), 0.0))
    if area <= 0.0 or on_image < MIN_SHARE_ON_IMAGE * area:
        return None
    clipped = np.array([max(x0, 0.0), max(y0, 0.0), min(x1, cols), min(y1, rows)])
    sx0, sy0, sx1, sy1 = transform.box_to_source(clipped)
    r0, c0, crop_rows, crop_cols = transform.crop
    sx0, sx1 = max(sx0, c0), min(sx1, c0 + crop_cols)
    sy0, sy1 = max(sy0, r0), min(sy1, r0 + crop_rows)
    if sx1 - sx0 < MIN_BOX_SIDE_PX or sy1 - sy0 < MIN_BOX_SIDE_PX:
        return None
    return (float(sx0), float(sy0), float(sx1), float(sy1))


@dataclass(frozen=True)
class Detections:
    """Detector output in model pixels."""

    boxes: np.ndarray
    scores: np.ndarray
    p_malignant: np.ndarray

    def outside(self, pectoral: PectoralEdge | None) -> Detections:
        """The detections whose box centre does not lie in the ``pectoral`` muscle."""
        if pectoral is None or not len(self.boxes):
            return self
        keep = pectoral.depth((self.boxes[:, 0] + self.boxes[:, 2]) / 2,
                              (self.boxes[:, 1] + self.boxes[:, 3]) / 2) <= 0
        return Detections(self.boxes[keep], self.scores[keep], self.p_malignant[keep])


def fuse_detections(members: list[Detections], iou: float = FUSION_IOU) -> Detections:
    """One set of findings from several detectors (weighted box fusion).

    Boxes are taken in descending score; each joins the group whose fused box it overlaps
    most (IoU >= ``iou``), unless that group already holds a box of the same detector, else
    starts a group. A group's score is the sum of its scores over the number of detectors, so
    a mass all of them see keeps its score and one seen by a single detector is divided by
    their number; its box and malignancy are the score-weighted means of its members'.
    """
    n = len(members)
    items = sorted(((float(s), k, b, float(p)) for k, d in enumerate(members)
                    for b, s, p in zip(d.boxes, d.scores, d.p_malignant, strict=True)),
                   key=lambda item: (-item[0], item[1]))
    groups: list[list[tuple[float, int, np.ndarray, float]]] = []
    fused: list[np.ndarray] = []
    for item in items:
        score, member, box, _ = item
        best = -1
        if fused:
            overlaps = box_iou_np(np.asarray(box)[None], np.asarray(fused))[0]
            for g in np.argsort(-overlaps, kind="stable"):
                if overlaps[g] < iou:
                    break
                if all(m != member for _, m, _, _ in groups[g]):
                    best = int(g)
                    break
        if best < 0:
            groups.append([item])
            fused.append(np.asarray(box, np.float64))
        else:
            groups[best].append(item)
            weights = np.array([s for s, _, _, _ in groups[best]])
            fused[best] = (weights[:, None] * np.array([b for _, _, b, _ in groups[best]])
                           ).sum(axis=0) / max(weights.sum(), 1e-12)
    scores = np.array([sum(s for s, _, _, _ in g) / n for g in groups])
    p_mal = np.array([sum(s * p for s, _, _, p in g) / max(sum(s for s, _, _, _ in g), 1e-12)
                      for g in groups])
    order = np.argsort(-scores, kind="stable")
    boxes = np.asarray(fused, np.float64).reshape(-1, 4)[order]
    return Detections(boxes, scores[order], p_mal[order])


def ensemble_map(networks: Sequence[Callable[[tf.Tensor], Any]], image: np.ndarray,
                 mirror: bool) -> np.ndarray:
    """The mean of U-Net ``networks``' maps (H, W) of a model-space image, each averaged
    with its map of the up/down mirror when ``mirror`` (one batch of two per network)."""
    views = image[None, :, :, None]
    if mirror:
        views = np.concatenate([views, views[:, ::-1]], axis=0)
    x = tf.constant(views, tf.float32)
    maps = []
    for network in networks:
        out = np.asarray(network(x), dtype=np.float32)[..., 0]
        maps.append((out[0] + out[1, ::-1]) / 2.0 if mirror else out[0])
    return maps[0] if len(maps) == 1 else np.asarray(np.mean(maps, axis=0), np.float32)


def check_pairing(unet: ModelBundle, frcnn: ModelBundle) -> None:
    """A segmenter that decodes the detector's backbone runs only with that very detector
    (the one its manifest names, by sha256), one network each, at one pixel spacing."""
    wanted = unet.manifest["architecture"].get("encoder") or {}
    found = frcnn.manifest["weights"]["sha256"]
    if wanted.get("sha256") != found:
        raise ModelStoreError(
            f"{unet.name} {unet.version} decodes the backbone of frcnn "
            f"{wanted.get('version', '?')} (sha256 {str(wanted.get('sha256'))[:12]}...), but "
            f"the detector found is frcnn {frcnn.version} (sha256 {found[:12]}...): ship the "
            "two together")
    if len(unet.members) != 1 or len(frcnn.members) != 1:
        raise ModelStoreError(f"{unet.name} {unet.version} shares the detector's backbone: "
                              "both must be single networks")
    if unet.spacing_mm != frcnn.spacing_mm or unet.thresholds.get("tta_vflip"):
        raise ModelStoreError(f"{unet.name} {unet.version} shares the detector's backbone: "
                              "it must take the detector's pixel spacing, without a mirror")


class Analyzer:
    """Both shipped models, ready to analyse images; safe to call from several threads."""

    def __init__(self, unet: ModelBundle, frcnn: ModelBundle, precision: str = "fp32",
                 finding_threshold: float | None = None, mask_mode: str | None = None,
                 exclude_pectoral: bool | None = None) -> None:
        """``finding_threshold``, ``mask_mode`` and ``exclude_pectoral``: the site's
        operating point, in place of the manifests' ``finding_score``, ``mask_mode`` and
        ``exclude_pectoral``."""
        #: What runs (fp32 or bf16; ``auto`` resolved by :func:`resolve_precision`), and why.
        self.precision, self.precision_reason = resolve_precision(precision)
        self.unet_bundle = unet
        self.frcnn_bundle = frcnn
        policy = keras.DTypePolicy(PRECISIONS[self.precision])
        # Each member network in its inference form: batch normalisation folded into the
        # convolutions (mammo_scp.models.fold), from the trained form in float32.
        unet_config = UNetConfig.from_dict(unet.config)
        #: the segmenter is a decoder on the detector's backbone: one pass serves both
        self.shared_backbone = unet_config.encoder == "detector"
        if self.shared_backbone:
            check_pairing(unet, frcnn)
        build = build_decoder if self.shared_backbone else build_unet
        self.unets = []
        for weights in unet.members:
            trained_unet = build(unet_config)
            trained_unet.set_weights(weights)
            folded = build(unet_config, dtype=policy, fold_bn=True)
            fold_batch_norm(trained_unet, folded)
            self.unets.append(folded)
        detector_config = FRCNNConfig.from_dict(frcnn.config)
        self.detectors = []
        for weights in frcnn.members:
            trained_detector = FasterRCNN(detector_config)
            trained_detector.set_weights(weights)
            self.detectors.append(trained_detector.for_inference(dtype=policy))
        self.unet, self.detector = self.unets[0], self.detectors[0]
        self.spacing_mm = unet.spacing_mm
        self.detector_spacing_mm = frcnn.spacing_mm
        self.mask_threshold = float(unet.thresholds.get("mask", 0.5))
        self.mask_mode = mask_mode or str(unet.thresholds.get("mask_mode", "all"))
        if self.mask_mode not in MASK_MODES:
            raise ValueError(f"mask mode must be one of {MASK_MODES}, got {self.mask_mode!r}")
        self.mask_min_area_mm2 = float(unet.thresholds.get("mask_min_area_mm2", 0.0))
        # finding_or_confident: the peak probability at which the U-Net's largest region is
        # shown without a finding
        self.mask_confident = float(unet.thresholds.get("mask_confident", 1.0))
        # near_candidates: the U-Net runs around every reported finding and the detector's
        # this many highest-scoring candidates on the breast, whatever their score
        self.mask_candidates = int(unet.thresholds.get("mask_candidates", 1))
        # test-time augmentation: average the U-Net over the image and its up/down mirror
        self.mask_tta = bool(unet.thresholds.get("tta_vflip", 0.0))
        self.score_threshold = float(frcnn.thresholds.get("finding_score", 0.5)
                                     if finding_threshold is None else finding_threshold)
        #: on an oblique view, nothing whose centre lies in the pectoral muscle is reported:
        #: neither a detection (any score) nor a U-Net region (mammo_scp.pectoral)
        self.exclude_pectoral = bool(frcnn.thresholds.get("exclude_pectoral", 0.0)
                                     if exclude_pectoral is None else exclude_pectoral)
        self._lock = threading.Lock()
        self.fusion_iou = float(frcnn.thresholds.get("fusion_iou", FUSION_IOU))
        # a batch of one, or of two with the mirror (one call: 6-12 % faster in bf16, the
        # same in fp32, on 2 cores of an AMD EPYC, 2026-12-04)
        self._unet_fns = [tf.function(lambda x, net=net: net(x, training=False),
                                      input_signature=[tf.TensorSpec([None, None, None, 1])])
                          for net in self.unets if not self.shared_backbone]
        if self.shared_backbone:
            detector, decoder = self.detectors[0], self.unets[0]
            self._taps_fn = tf.function(detector.backbone_with_taps(),
                                        input_signature=[tf.TensorSpec([1, None, None, 1])])
            self._decoder_fn = tf.function(lambda taps: decoder(taps, training=False))
            self._detect_from_fn = tf.function(
                lambda f, lg, d, hw: detector.detect_from(f, lg, d, hw)[0])
        self.segmenter_info = ModelInfo(unet.name, unet.version)
        self.detector_info = ModelInfo(frcnn.name, frcnn.version)

    @classmethod
    def load(cls, models_dir: Path, precision: str = "fp32",
             finding_threshold: float | None = None, mask_mode: str | None = None,
             exclude_pectoral: bool | None = None) -> Analyzer:
        """Load and verify ``models_dir/unet`` and ``models_dir/frcnn`` (latest versions)."""
        return cls(load_model(Path(models_dir), "unet"), load_model(Path(models_dir), "frcnn"),
                   precision, finding_threshold, mask_mode, exclude_pectoral)

    # -- model calls ----------------------------------------------------------------------------

    def segment(self, image: np.ndarray) -> np.ndarray:
        """U-Net probability map (H, W) for a model-space image: the mean of the members'
        maps (each mirror-averaged if so set); with a shared backbone, its decoder's map."""
        if self.shared_backbone:
            return self.segment_and_detect(image)[0]
        with self._lock:
            return ensemble_map(self._unet_fns, image, self.mask_tta)

    def segment_windows(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """The U-Net's map of a model-space image on the windows around ``boxes`` only
        (:func:`finding_windows`), 0 elsewhere: what mask mode ``with_finding`` keeps, at a
        fraction of the whole image's cost."""
        prob = np.zeros(image.shape, np.float32)
        for r0, c0, r1, c1 in finding_windows(boxes, image.shape):
            prob[r0:r1, c0:c1] = self.segment(image[r0:r1, c0:c1])
        return prob

    def detect(self, image: np.ndarray) -> Detections:
        """Detector boxes, mass scores and malignancy probabilities in model pixels; the
        members' findings fused (:func:`fuse_detections`) where there are several."""
        x = tf.constant(image[None, :, :, None], tf.float32)
        found = []
        with self._lock:
            for detector in self.detectors:
                boxes, scores, p_mal = detector.detect_one(x)
                found.append(Detections(np.asarray(boxes, np.float64).reshape(-1, 4),
                                        np.asarray(scores, np.float64).reshape(-1),
                                        np.asarray(p_mal, np.float64).reshape(-1)))
        return found[0] if len(found) == 1 else fuse_detections(found, self.fusion_iou)

    def segment_and_detect(self, image: np.ndarray) -> tuple[np.ndarray, Detections,
                                                            dict[str, float]]:
        """Both models on a model-space image: with a shared backbone in one backbone pass
        (its time counted as the detector's, the decoder's as the segmenter's), else
        :meth:`segment` then :meth:`detect`. Returns the map, the detections and the times."""
        t0 = time.perf_counter()
        if not self.shared_backbone:
            prob = self.segment(image)
            t1 = time.perf_counter()
            det = self.detect(image)
            return prob, det, {"unet": (t1 - t0) * 1e3,
                               "frcnn": (time.perf_counter() - t1) * 1e3}
        x = tf.constant(image[None, :, :, None], tf.float32)
        with self._lock:
            outputs = self._taps_fn(x)
            t1 = time.perf_counter()
            boxes, scores, p_mal = self._detect_from_fn(*outputs[:3], tf.shape(x)[1:3])
            boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
            t2 = time.perf_counter()
            prob = np.asarray(self._decoder_fn(list(outputs[3:])), np.float32)[0, :, :, 0]
            t3 = time.perf_counter()
        det = Detections(boxes, np.asarray(scores, np.float64).reshape(-1),
                         np.asarray(p_mal, np.float64).reshape(-1))
        return prob, det, {"unet": (t3 - t2) * 1e3, "frcnn": (t2 - t0) * 1e3}

    # -- whole images ---------------------------------------------------------------------------

    def analyze(self, ds: Dataset, score_threshold: float | None = None) -> ImageAnalysis:
        """Analyse a received DICOM image; mask and boxes come back in its own pixels."""
        t0 = time.perf_counter()
        pre = preprocess_dataset(ds, model_spacing_mm=self.spacing_mm, pad_multiple=PAD_MULTIPLE,
                                 pectoral=self.exclude_pectoral)
        pre_det = pre
        if self.detector_spacing_mm != self.spacing_mm:
            pre_det = preprocess_dataset(ds, model_spacing_mm=self.detector_spacing_mm,
                                         pad_multiple=PAD_MULTIPLE,
                                         pectoral=self.exclude_pectoral)
        return self._run(pre, pre_det, str(ds.get("SOPInstanceUID", "")), t0, score_threshold)

    def analyze_array(self, pixels: np.ndarray, spacing_mm: float | tuple[float, float],
                      laterality: str | None = None, sop_uid: str = "",
                      score_threshold: float | None = None, view: str | None = None
                      ) -> ImageAnalysis:
        """Analyse a plain presentation-ready array (bright = dense), e.g. a mini-MIAS PNG;
        ``view``: its View Position (MLO, CC, ...), where known."""
        t0 = time.perf_counter()
        view = view if self.exclude_pectoral else None  # the muscle is looked for only then
        pre = preprocess_array(pixels, spacing_mm, model_spacing_mm=self.spacing_mm,
                               laterality=laterality, flip=FlipMode.AUTO,
                               pad_multiple=PAD_MULTIPLE, view=view)
        pre_det = pre
        if self.detector_spacing_mm != self.spacing_mm:
            pre_det = preprocess_array(pixels, spacing_mm,
                                       model_spacing_mm=self.detector_spacing_mm,
                                       laterality=laterality, flip=FlipMode.AUTO,
                                       pad_multiple=PAD_MULTIPLE, view=view)
        return self._run(pre, pre_det, sop_uid, t0, score_threshold)

    def _reported_boxes(self, det: Detections, pre: Preprocessed, pre_det: Preprocessed
                        ) -> np.ndarray:
        """The boxes of the findings reported at the default threshold, in the U-Net's
        model space (the detector's boxes carried there via source pixels where the two
        models take different spacings)."""
        return self._in_unet_space(det.boxes[det.scores >= self.score_threshold], pre,
                                   pre_det)

    def _window_boxes(self, det: Detections, pre: Preprocessed, pre_det: Preprocessed
                      ) -> np.ndarray:
        """Where a gated mask mode runs the U-Net (U-Net model space): around the reported
        findings and, for ``near_candidates``, also the :attr:`mask_candidates`
        highest-scoring candidates that lie on the breast."""
        chosen = det.scores >= self.score_threshold
        if self.mask_mode == "near_candidates":
            on_breast = [i for i in np.argsort(-det.scores, kind="stable")
                         if breast_box(det.boxes[i], pre_det.transform) is not None]
            chosen[on_breast[:self.mask_candidates]] = True
        return self._in_unet_space(det.boxes[chosen], pre, pre_det)

    def _in_unet_space(self, boxes: np.ndarray, pre: Preprocessed, pre_det: Preprocessed
                       ) -> np.ndarray:
        """Detector boxes in the U-Net's model space."""
        if pre_det is pre:
            return boxes
        corners = [pre.transform.from_source(pre_det.transform.box_to_source(b).reshape(2, 2))
                   for b in boxes]
        return np.array([[c[:, 0].min(), c[:, 1].min(), c[:, 0].max(), c[:, 1].max()]
                         for c in corners]).reshape(-1, 4)

    def _run(self, pre: Preprocessed, pre_det: Preprocessed, sop_uid: str, t0: float,
             score_threshold: float | None) -> ImageAnalysis:
        threshold = self.score_threshold if score_threshold is None else score_threshold
        muscle, muscle_det = pre.pectoral, pre_det.pectoral  # found only if it is excluded
        t1 = time.perf_counter()
        gated = self.mask_mode in GATED_MASK_MODES and not self.shared_backbone
        if gated:  # the detector first; the U-Net only around what it reports or proposes
            det = self.detect(pre_det.image).outside(muscle_det)
            t2 = time.perf_counter()
            reported = self._reported_boxes(det, pre, pre_det)
            prob = self.segment_windows(pre.image, self._window_boxes(det, pre, pre_det))
            model_ms = {"frcnn": (t2 - t1) * 1e3, "unet": (time.perf_counter() - t2) * 1e3}
        elif pre_det is pre:
            prob, det, model_ms = self.segment_and_detect(pre.image)
        else:
            prob = self.segment(pre.image)
            t2 = time.perf_counter()
            det = self.detect(pre_det.image)
            model_ms = {"unet": (t2 - t1) * 1e3, "frcnn": (time.perf_counter() - t2) * 1e3}
        t3 = time.perf_counter()
        if not gated:
            det = det.outside(muscle_det)
            reported = self._reported_boxes(det, pre, pre_det)
        min_area_px = self.mask_min_area_mm2 / self.spacing_mm ** 2
        model_mask = postprocess_mask(prob, self.mask_threshold, self.mask_mode, min_area_px,
                                      reported, self.mask_confident, muscle)
        mask = pre.transform.mask_to_source(model_mask, 0.5)
        findings, mass_score = [], 0.0
        for box, score, p_mal in zip(det.boxes, det.scores, det.p_malignant, strict=True):
            in_breast = breast_box(box, pre_det.transform)
            if in_breast is None:
                continue
            mass_score = max(mass_score, float(np.clip(score, 0, 1)))
            if score < threshold:
                continue
            x0, y0, x1, y1 = in_breast
            findings.append(Finding(Box(float(x0), float(y0), float(x1), float(y1)),
                                    float(np.clip(score, 0, 1)), float(np.clip(p_mal, 0, 1))))
        findings.sort(key=lambda f: -f.score)
        t4 = time.perf_counter()
        timings = {"preprocess": (t1 - t0) * 1e3, **model_ms,
                   "postprocess": (t4 - t3) * 1e3, "total": (t4 - t0) * 1e3}
        logger.debug("analysed %s: %d findings in %.0f ms", sop_uid, len(findings),
                     timings["total"])
        return ImageAnalysis(sop_instance_uid=sop_uid, mask=mask, findings=tuple(findings),
                             segmenter=self.segmenter_info, detector=self.detector_info,
                             timings_ms=timings, mass_score=mass_score)


__all__ = ["GATED_MASK_MODES", "Analyzer", "Detections", "breast_box", "check_pairing",
           "ensemble_map", "finding_windows", "fuse_detections", "mask_regions",
           "postprocess_mask"]
