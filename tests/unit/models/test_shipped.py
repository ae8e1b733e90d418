"""The shipped models: verified loading, refusal of a corrupt copy, and a real-image check."""

from __future__ import annotations

import logging
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf
from pydicom.uid import generate_uid

from mammo_scp.models.analyzer import Analyzer
from mammo_scp.models.fold import fold_batch_norm
from mammo_scp.models.frcnn import FasterRCNN, FRCNNConfig
from mammo_scp.models.store import INTENDED_USE, MODEL_NAMES, ModelStoreError, load_model
from mammo_scp.models.unet import UNetConfig, build_decoder, build_unet
from mammo_scp.pipeline import image_problem
from mammo_scp.preprocess import preprocess_array
from mammo_scp.results import ImageAnalysis
from mammo_scp.warmup import synthetic_mammogram, warm_up
from tests.support.mg import add_mass, make_mg

BACKGROUND = "mdb006.png"  # a fatty normal left breast of the training folder
MASS_RADIUS = 40  # source pixels = 8 mm at 0.2 mm


@pytest.fixture(scope="module")
def analyzer(models_dir: Path) -> Analyzer:
    return Analyzer.load(models_dir)


@pytest.fixture(scope="module")
def mass_image(mias_dir: Path) -> tuple[np.ndarray, tuple[int, int]]:
    """A real mini-MIAS breast with a clear synthetic mass in its tissue."""
    img = cv2.imread(str(mias_dir / BACKGROUND), cv2.IMREAD_GRAYSCALE)
    t = preprocess_array(img, 0.2, model_spacing_mm=0.8).transform
    r0, c0, rows, cols = t.crop
    row = r0 + int(rows * 0.55)
    # 40 % of the breast width away from the chest wall (on the right after the flip: L breast)
    col = c0 + int(cols * 0.6) if t.flipped else c0 + int(cols * 0.4)
    return add_mass(img, (row, col), MASS_RADIUS), (row, col)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_manifests_are_complete_and_hashes_verify(models_dir, name):
    bundle = load_model(models_dir, name)  # verifies the sha256
    m = bundle.manifest
    assert m["intended_use"] == INTENDED_USE
    assert m["weights"]["dtype"] == "float16" and len(m["weights"]["sha256"]) == 64
    assert bundle.spacing_mm > 0 and m["architecture"]["config"]
    split = m["training"]["split"]
    assert split["by"] == "woman" and set(split["train_women"]).isdisjoint(split["val_women"])
    metrics = m["validation_metrics"]
    assert set(metrics["froc_sensitivity"]) == {"0.25", "0.5", "1.0", "2.0", "4.0"}
    assert "dice_mass_images" in metrics and "iou_mass_images" in metrics


def test_a_corrupted_copy_is_refused_naming_the_file(models_dir, tmp_path):
    copy = tmp_path / "models"
    shutil.copytree(models_dir, copy)
    bundle = load_model(copy, "frcnn")
    weights = bundle.path / "weights.npz"
    data = bytearray(weights.read_bytes())
    data[1000] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelStoreError, match=r"frcnn/.*/weights\.npz is corrupt"):
        Analyzer.load(copy)


def test_finds_a_clear_mass_on_a_real_mias_background(analyzer, mass_image):
    pixels, (row, col) = mass_image
    ds = make_mg("L", "MLO", study_uid=generate_uid(), pixels=pixels, bits_stored=8,
                 spacing_mm=0.2)
    result = analyzer.analyze(ds)
    assert isinstance(result, ImageAnalysis)
    assert result.mask.shape == pixels.shape and result.sop_instance_uid == ds.SOPInstanceUID
    assert result.findings, "no finding on an obvious mass"
    top = result.findings[0]
    cx, cy = top.box.centre
    assert (cx - col) ** 2 + (cy - row) ** 2 <= MASS_RADIUS ** 2
    assert 0.0 <= top.p_malignant <= 1.0
    assert result.mask[row, col], "the segmentation misses the mass centre"
    yy, xx = np.mgrid[0:pixels.shape[0], 0:pixels.shape[1]]
    truth = (yy - row) ** 2 + (xx - col) ** 2 <= MASS_RADIUS ** 2
    dice = 2 * (truth & result.mask).sum() / (truth.sum() + result.mask.sum())
    assert dice > 0.3


def test_the_segmenter_averages_every_member_over_the_image_and_its_mirror(analyzer,
                                                                           mass_image):
    pixels, _ = mass_image
    image = preprocess_array(pixels, 0.2, model_spacing_mm=analyzer.spacing_mm).image
    if analyzer.shared_backbone:  # one network: the decoder on the detector's backbone
        taps = analyzer.detector.backbone_with_taps()(image[None, :, :, None], training=False)
        want = analyzer.unet(taps[3:], training=False).numpy()[0, :, :, 0]
        assert len(analyzer.unets) == 1 and not analyzer.mask_tta
        assert np.allclose(analyzer.segment(image), want, atol=1e-5)
        return
    assert analyzer.mask_tta == bool(analyzer.unet_bundle.thresholds.get("tta_vflip", 0))
    maps = []
    for net in analyzer.unets:
        maps.append(net(image[None, :, :, None], training=False).numpy()[0, :, :, 0])
        if analyzer.mask_tta:
            mirrored = np.ascontiguousarray(image[::-1])[None, :, :, None]
            maps.append(net(mirrored, training=False).numpy()[0, ::-1, :, 0])
    assert len(maps) == len(analyzer.unets) * (2 if analyzer.mask_tta else 1)
    assert np.allclose(analyzer.segment(image), np.mean(maps, axis=0), atol=1e-5)


def test_concurrent_calls_agree(analyzer, mass_image):
    pixels, _ = mass_image
    with ThreadPoolExecutor(max_workers=2) as pool:
        a, b = pool.map(lambda _: analyzer.analyze_array(pixels, 0.2, "L", "x"), range(2))
    assert np.array_equal(a.mask, b.mask)
    assert [f.box for f in a.findings] == [f.box for f in b.findings]


def test_warm_up_runs_a_study_s_steps_and_says_nothing(analyzer: Analyzer,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """The start-up warm-up: its made-up image is one the pipeline would process, and
    analysing it, encoding a SEG and a report and writing them logs nothing of ours at
    INFO (no "built ..." lines for a study that does not exist)."""
    assert image_problem(synthetic_mammogram()) is None
    with caplog.at_level(logging.INFO):
        warm_up(analyzer)
    ours = [r for r in caplog.records if r.name.startswith("mammo_scp")]
    assert not [r for r in ours if r.levelno >= logging.INFO], caplog.text
    assert logging.getLogger("mammo_scp.encode").level == logging.NOTSET


def test_bf16_weights_are_held_in_bfloat16_with_the_same_outputs(models_dir, mass_image):
    """In bf16 the networks hold their weights in bfloat16, instead of float32 cast on
    every call (mixed_bfloat16): the outputs are the same bit for bit."""
    bf16 = Analyzer.load(models_dir, precision="bf16")
    for model in (bf16.unet, bf16.detector.backbone, bf16.detector.head):
        for layer in model.layers:
            # the output layers compute in float32 under either policy
            held = "float32" if layer.dtype_policy.name == "float32" else "bfloat16"
            assert all(str(w.dtype) == held for w in layer.weights), layer.name
        assert sum(str(w.dtype) == "bfloat16" for w in model.weights) > 0
    mixed = keras.DTypePolicy("mixed_bfloat16")
    unet_config = UNetConfig.from_dict(bf16.unet_bundle.config)
    build = build_decoder if bf16.shared_backbone else build_unet
    trained_unet = build(unet_config, dtype=mixed)
    trained_unet.set_weights(bf16.unet_bundle.weights)
    unet = build(unet_config, dtype=mixed, fold_bn=True)
    fold_batch_norm(trained_unet, unet)
    trained = FasterRCNN(FRCNNConfig.from_dict(bf16.frcnn_bundle.config), dtype=mixed)
    trained.set_weights(bf16.frcnn_bundle.weights)
    detector = trained.for_inference()

    pixels, _ = mass_image
    image = preprocess_array(pixels, 0.2, model_spacing_mm=bf16.spacing_mm).image
    x = tf.constant(image[None, :, :, None])
    if bf16.shared_backbone:  # the decoder reads the (bf16) backbone's taps
        seg_in = detector.backbone_with_taps()(x, training=False)[3:]
        got = bf16.unet(bf16.detector.backbone_with_taps()(x, training=False)[3:],
                        training=False).numpy()
    else:
        seg_in = x
        got = bf16.unet(x, training=False).numpy()
    want = unet(seg_in, training=False).numpy()
    assert want.max() > 0.5  # the mass is there to compare
    assert np.array_equal(got, want)
    found, expected = bf16.detector.detect_one(x), detector.detect_one(x)
    assert expected[0].shape[0] > 0
    for got, wanted in zip(found, expected, strict=True):
        assert np.array_equal(got.numpy(), wanted.numpy())


def _record_segments(analyzer: Analyzer, shapes: list[tuple[int, ...]],
                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Append the shape of every image the analyzer's U-Net is run on to ``shapes``."""
    segment = analyzer.segment
    monkeypatch.setattr(analyzer, "segment", lambda image: shapes.append(image.shape)
                        or segment(image))


def test_with_finding_the_segmenter_runs_only_around_findings(models_dir, mass_image,
                                                               mias_dir, monkeypatch):
    gated = Analyzer.load(models_dir, finding_threshold=0.2, mask_mode="with_finding")
    assert gated.score_threshold == 0.2 and gated.mask_mode == "with_finding"
    shapes: list[tuple[int, ...]] = []
    _record_segments(gated, shapes, monkeypatch)
    pixels, (row, col) = mass_image
    result = gated.analyze_array(pixels, 0.2, "L", "mass")
    assert result.findings and result.mask[row, col]
    whole = preprocess_array(pixels, 0.2, model_spacing_mm=gated.spacing_mm).image.shape
    assert shapes and all(s[0] * s[1] < whole[0] * whole[1] for s in shapes)
    # the mask lies on the findings: every masked pixel is inside some finding's box grown
    # by the window margin
    ys, xs = np.nonzero(result.mask)
    near = np.zeros(len(xs), bool)
    margin = 64 * gated.spacing_mm / 0.2
    for f in result.findings:
        near |= ((xs >= f.box.x0 - margin) & (xs <= f.box.x1 + margin)
                 & (ys >= f.box.y0 - margin) & (ys <= f.box.y1 + margin))
    assert near.all()
    # nothing reported: the U-Net does not run and there is no mask
    shapes.clear()
    none = Analyzer.load(models_dir, finding_threshold=1.0, mask_mode="with_finding")
    _record_segments(none, shapes, monkeypatch)
    empty = none.analyze_array(pixels, 0.2, "L", "mass")
    assert not empty.findings and not empty.mask.any() and shapes == []
    assert empty.mass_score == pytest.approx(result.mass_score)


def test_near_candidates_the_segmenter_runs_around_the_top_candidates_finding_or_not(
        models_dir, mass_image, monkeypatch):
    gated = Analyzer.load(models_dir, finding_threshold=1.0, mask_mode="near_candidates")
    gated.mask_candidates = 1
    windows: list[tuple[int, ...]] = []
    _record_segments(gated, windows, monkeypatch)
    pixels, (row, col) = mass_image
    result = gated.analyze_array(pixels, 0.2, "L", "mass")
    # nothing is reported at 1.0, yet the U-Net ran once, on a window around the top
    # candidate (the clear mass), and drew the mass there
    assert not result.findings
    whole = preprocess_array(pixels, 0.2, model_spacing_mm=gated.spacing_mm).image.shape
    assert len(windows) == 1 and windows[0][0] * windows[0][1] < whole[0] * whole[1]
    assert result.mask[row, col]
    # with_finding at the same threshold draws nothing; largest draws the same mass
    plain = Analyzer.load(models_dir, finding_threshold=1.0, mask_mode="largest")
    assert plain.analyze_array(pixels, 0.2, "L", "mass").mask[row, col]
    gated.mask_candidates = 0
    windows.clear()
    assert not gated.analyze_array(pixels, 0.2, "L", "mass").mask.any() and windows == []


def test_an_unknown_mask_mode_is_refused(models_dir):
    with pytest.raises(ValueError, match="mask mode"):
        Analyzer.load(models_dir, mask_mode="biggest")


def test_nothing_is_reported_in_the_pectoral_muscle_of_an_oblique_view(models_dir, mias_dir,
                                                                        mass_image):
    """A clear mass drawn in the muscle of a real MLO view: found with the muscle kept,
    neither a finding nor a SEG there with it excluded; a mass in the tissue is kept."""
    img = cv2.imread(str(mias_dir / BACKGROUND), cv2.IMREAD_GRAYSCALE)
    pre = preprocess_array(img, 0.2, model_spacing_mm=0.4, view="MLO")
    muscle = pre.pectoral
    assert muscle is not None
    col, row = (int(v) for v in pre.transform.to_source(
        np.array([[muscle.top_col / 3, muscle.wall_row / 3]]))[0])  # the triangle's centroid
    pixels = add_mass(img, (row, col), MASS_RADIUS)

    def at_the_mass(result: ImageAnalysis) -> list[float]:
        return [f.score for f in result.findings
                if abs(f.box.centre[0] - col) < MASS_RADIUS
                and abs(f.box.centre[1] - row) < MASS_RADIUS]

    kept = Analyzer.load(models_dir, exclude_pectoral=False).analyze_array(
        pixels, 0.2, "L", "in-muscle", view="MLO")
    assert at_the_mass(kept) and kept.mask[row, col]
    excluding = Analyzer.load(models_dir, exclude_pectoral=True)
    assert excluding.exclude_pectoral
    excluded = excluding.analyze_array(pixels, 0.2, "L", "in-muscle", view="MLO")
    assert not at_the_mass(excluded) and not excluded.mask[row, col]
    # received as DICOM, the View Position decides: on a view that is not oblique the
    # muscle is not looked for, so nothing is excluded
    study = generate_uid()
    for view, seen in (("MLO", False), ("CC", True)):
        ds = make_mg("L", view, study_uid=study, pixels=pixels, bits_stored=8, spacing_mm=0.2)
        result = excluding.analyze(ds)
        assert bool(at_the_mass(result)) == seen and result.mask[row, col] == seen
    tissue_pixels, (trow, tcol) = mass_image
    in_tissue = excluding.analyze_array(tissue_pixels, 0.2, "L", "in-tissue", view="MLO")
    assert in_tissue.findings and in_tissue.mask[trow, tcol]
