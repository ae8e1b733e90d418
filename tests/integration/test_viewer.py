"""The radiologist's viewer: OHIF (npm @ohif/app, its built dist/) in headless Chromium
shows the node's SEG as an overlay on the mammogram and lists the SR, read from Orthanc.

The SEG and SR are made by the node's encoders from the mini-MIAS truth circles, so the
test checks what a viewer does with our objects, whatever the models find.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from mammo_scp.encode import build_measurement_report, build_seg
from mammo_scp.results import Box, Finding, ImageAnalysis, ModelInfo
from tests.support import ohif
from tests.support.mg import FOUR_VIEWS
from tests.support.mias import mias_dataset, mias_masses
from tests.support.orthanc import Orthanc
from tests.support.peers import free_port, storescu

STUDY = {("R", "CC"): "mdb009", ("L", "CC"): "mdb010", ("R", "MLO"): "mdb011",
         ("L", "MLO"): "mdb012"}
MODELS = (ModelInfo("mammo-unet", "test"), ModelInfo("mammo-frcnn", "test"))

pytestmark = pytest.mark.skipif(not ohif.available(),
                                reason=f"OHIF dist not at {ohif.OHIF_DIST} (tests/run.sh "
                                       "unpacks it) or chromium missing")


def _truth_analysis(ds, ref: str) -> ImageAnalysis:  # type: ignore[no-untyped-def]
    mask = np.zeros((int(ds.Rows), int(ds.Columns)), dtype=bool)
    findings = []
    yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
    for lesion in mias_masses(ref):
        mask |= (xx - lesion.x) ** 2 + (yy - lesion.row) ** 2 <= lesion.radius ** 2
        findings.append(Finding(Box(lesion.x - lesion.radius, lesion.row - lesion.radius,
                                    lesion.x + lesion.radius, lesion.row + lesion.radius),
                                0.9, 0.8 if lesion.malignant else 0.2))
    return ImageAnalysis(str(ds.SOPInstanceUID), mask, tuple(findings), *MODELS)


def test_ohif_draws_the_seg_on_the_mammogram(tmp_path: Path) -> None:
    study_uid = generate_uid()
    sources, analyses = [], []
    for number, (laterality, view) in enumerate(FOUR_VIEWS, start=1):
        ds = mias_dataset(STUDY[(laterality, view)], view, study_uid=study_uid,
                          instance_number=number)
        # OHIF 3.13 throws "Invalid VOI LUT function" when it overlays a SEG on an image
        # that has VOI LUT Function LINEAR (a viewer bug; the attribute is valid).
        del ds.VOILUTFunction
        sources.append(ds)
        analyses.append(_truth_analysis(ds, STUDY[(laterality, view)]))
    segs = [s for s in (build_seg(d, a) for d, a in zip(sources, analyses, strict=True)) if s]
    assert len(segs) == 2  # the two images with a mass
    sr = build_measurement_report(sources, analyses, segs)
    files = []
    for n, obj in enumerate([*sources, *segs, sr]):
        path = tmp_path / f"{n}.dcm"
        obj.save_as(path, enforce_file_format=True)
        files.append(path)

    pacs = Orthanc(tmp_path / "orthanc").start()
    viewer = ohif.OhifServer(pacs.url, free_port()).start()
    try:
        stored = storescu(pacs.dicom_port, pacs.aet, files, "-R")
        assert stored.stderr.count("(Success)") == len(files), stored.stderr
        shot = tmp_path / "ohif.png"
        url = (f"http://127.0.0.1:{viewer.port}/viewer?StudyInstanceUIDs={study_uid}"
               f"&initialSeriesInstanceUID={segs[0].SeriesInstanceUID}")
        dom, console = ohif.chromium(url, shot)
    finally:
        viewer.stop()
        pacs.stop()

    text = re.sub(r"<[^>]+>", " ", dom)
    assert "AI mass segmentation" in text and "AI mass measurements" in text
    assert "SEG parse complete" in console, console[-3000:]
    assert "failed to load" not in console and "Error loading displaySet" not in console
    # The overlay: the SEG's recommended display colour (red) fills part of the image.
    rgb = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    red = (rgb[..., 0] > 150) & (rgb[..., 1] < 90) & (rgb[..., 2] < 90)
    assert red.sum() > 500, "no SEG overlay drawn"
    if os.environ.get("MAMMO_DOCS_SCREENSHOT_OHIF"):
        shutil.copy(shot, os.environ["MAMMO_DOCS_SCREENSHOT_OHIF"])
