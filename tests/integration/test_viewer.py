"""The radiologist's viewer: what the node sends is shown by OHIF in a real browser.

A four-view mini-MIAS study goes to Orthanc (as the modality would send it to the PACS) and
to ``mammo-scp serve`` with the shipped models, which delivers its SEGs and SR to Orthanc.
OHIF 3.13 (npm @ohif/app, its built dist/, served on loopback with Orthanc's DICOMweb as
its data source) runs in the Debian chromium driven by Playwright, and must:

* list the four images, the SEGs and the SR of the study;
* load each SEG as a segmentation with the segment "Mass", drawn over the truth circle of
  that image's mass (screen pixels change there when the segment is shown, not elsewhere);
* load the SR, draw its findings and track them: each finding is a measurement in OHIF's
  Measurements panel, labelled with its probability of cancer;
* open a second study, one without findings, for which the node sends no SEG and no
  Measurement Report (OHIF 3.13.2 cannot open one without findings: docs/ohif.md) but an
  Enhanced SR saying "no finding", which OHIF shows as text, without an error;
* log no error about SEG, SR, segmentation, measurement or VOI parsing.

mdb010 (LCC) and mdb012 (LMLO) carry a benign mass that the shipped U-Net covers (0.99 and
more of the truth circle) and the detector finds; mdb009 and mdb011 have none. In the second
study (mdb006, mdb007, mdb004, mdb035, all normal) the shipped models find nothing
(frcnn 2.0.0 marks mdb014, the study's fourth image until then, at 0.35).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image
from pydicom import dcmread
from pydicom.uid import generate_uid

from mammo_scp.db import Database
from mammo_scp.encode import codes
from mammo_scp.jobs.models import Job, Study
from mammo_scp.jobs.states import JobState
from tests.support import ohif
from tests.support.mg import FOUR_VIEWS, Patient
from tests.support.mias import (
    DEFAULT_PATIENT,
    MASS_STUDY,
    Lesion,
    mias_dataset,
    mias_masses,
)
from tests.support.orthanc import Orthanc, node_config
from tests.support.peers import NodeProcess, free_port, storescu, wait_for

AET = "MAMMO_SCP"
STUDY = MASS_STUDY
WITH_MASS = ("mdb010", "mdb012")
NORMAL = {("R", "CC"): "mdb007", ("L", "CC"): "mdb006", ("R", "MLO"): "mdb035",
          ("L", "MLO"): "mdb004"}
SCALE = 3.0  # the screen region checked: a square of half-side 3 truth radii
TIMEOUT_MS = 120_000  # a slow, shared 2-core machine: software WebGL, TensorFlow nearby
# Console lines that mean OHIF could not read or draw what we sent.
FATAL = re.compile(r"seg\b|\bsr\b|segment|measurement|voi lut|referencedsop|contentsequence|"
                   r"scoord|error boundary|something went wrong", re.IGNORECASE)

pytestmark = pytest.mark.skipif(
    not (ohif.available() and ohif.playwright_available()),
    reason=f"OHIF dist not at {ohif.OHIF_DIST} (tests/run.sh unpacks it), Debian chromium "
           "or the playwright package (pip install '.[test]') missing")


@dataclass(frozen=True)
class OnScreen:
    """A truth circle mapped to page pixels through the cornerstone viewport."""

    viewport_id: str
    sop_instance_uid: str
    x: float
    y: float
    radius: float


def _send_study_through_the_node(folder: Path, pacs: Orthanc, node_port: int,
                                 study_uid: str, views: dict[tuple[str, str], str],
                                 db: Database, patient: Patient = DEFAULT_PATIENT,
                                 ) -> dict[str, str]:
    """Images to the PACS and to the node; wait for the node's job to be done. Returns SOP
    UID -> ref."""
    files, refs = [], {}
    folder.mkdir()
    for number, (laterality, view) in enumerate(FOUR_VIEWS, start=1):
        ref = views[(laterality, view)]
        ds = mias_dataset(ref, view, study_uid=study_uid, instance_number=number,
                          patient=patient)
        # OHIF 3.13 turns VOI LUT Function "LINEAR" into "L" and stops rendering the image
        # (cornerstone3D #2844, OHIF #6239); the node never sends images. See docs/ohif.md.
        del ds.VOILUTFunction
        path = folder / f"{laterality}{view}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        refs[str(ds.SOPInstanceUID)] = ref
    to_pacs = storescu(pacs.dicom_port, pacs.aet, files)
    assert to_pacs.stderr.count("(Success)") == 4, to_pacs.stderr
    to_node = storescu(node_port, AET, files)
    assert to_node.stderr.count("(Success)") == 4, to_node.stderr

    def done() -> bool:
        with db.session() as session:
            state = session.scalar(sa.select(Job.state).join(Study)
                                   .where(Study.study_uid == study_uid))
        return state == JobState.DONE

    wait_for(done, 300, interval=1.0, what="the node's job to be done (results delivered)")
    return refs


def _viewport_state(page: Any) -> dict[str, Any]:
    return dict(page.evaluate("""() => {
        const engine = window.cornerstone.getRenderingEngines()[0];
        const viewports = engine ? engine.getViewports() : [];
        const segs = window.services.segmentationService.getSegmentations();
        return {
          viewports: viewports.map(v => ({id: v.id, imageId: v.getCurrentImageId()})),
          segmentations: segs.map(s => ({id: s.segmentationId, label: s.label,
            segments: Object.values(s.segments).filter(g => g).map(g => g.label)})),
        };
    }"""))


def _on_screen(page: Any, lesion: Lesion) -> OnScreen:
    found = page.evaluate("""([x, row, radius]) => {
        const engine = window.cornerstone.getRenderingEngines()[0];
        const vp = engine.getViewports()[0];
        const {imageData} = vp.getImageData();
        const box = vp.element.getBoundingClientRect();
        const centre = vp.worldToCanvas(imageData.indexToWorld([x, row, 0]));
        const edge = vp.worldToCanvas(imageData.indexToWorld([x + radius, row, 0]));
        return {id: vp.id, imageId: vp.getCurrentImageId(), x: box.left + centre[0],
                y: box.top + centre[1], r: Math.hypot(edge[0] - centre[0], edge[1] - centre[1])};
    }""", [lesion.x, lesion.row, lesion.radius])
    sop = re.search(r"/instances/([0-9.]+)/", found["imageId"])
    assert sop, found["imageId"]
    return OnScreen(found["id"], sop.group(1), found["x"], found["y"], found["r"])


def _with_segmentations(page: Any, count: int) -> dict[str, Any] | None:
    state = _viewport_state(page)
    return state if len(state["segmentations"]) == count else None


def _region(page: Any, where: OnScreen) -> np.ndarray:
    """RGB page pixels of the square of half-side ``SCALE`` radii around the circle."""
    half = SCALE * where.radius
    png = page.screenshot(clip={"x": where.x - half, "y": where.y - half,
                                "width": 2 * half, "height": 2 * half})
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def _disk(shape: tuple[int, ...], inner: float, outer: float) -> np.ndarray:
    """Pixels of a ``_region`` square between ``inner`` and ``outer`` radii of the circle."""
    rows, cols = shape[:2]
    yy, xx = np.mgrid[:rows, :cols]
    radius_px = rows / (2 * SCALE)
    d = np.hypot(xx - cols / 2, yy - rows / 2) / radius_px
    return np.asarray((d >= inner) & (d < outer))


def _reddish(rgb: np.ndarray) -> np.ndarray:
    return np.asarray((rgb[..., 0] - rgb[..., 1] > 40) & (rgb[..., 0] - rgb[..., 2] > 40))


def _red_region(page: Any, where: OnScreen, fraction: float, above: bool) -> np.ndarray | None:
    """The region around the circle when the share of red pixels inside 0.7 radii is above
    (or below) ``fraction``, else None."""
    rgb = _region(page, where)
    red = float(_reddish(rgb)[_disk(rgb.shape, 0.0, 0.7)].mean())
    return rgb if (red > fraction if above else red < fraction) else None


def _poll(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """Call ``check`` until it returns something other than None or False; return that."""
    def boxed() -> list[Any] | None:
        value = check()
        return None if value is None or value is False else [value]
    return wait_for(boxed, timeout, interval=0.5, what=what)[0]


def _dismiss_banners(page: Any) -> None:
    for label in ("Confirm and hide", "Skip all"):
        button = page.get_by_text(label, exact=True)
        if button.count():
            button.first.click()


def test_ohif_shows_the_nodes_seg_and_sr(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    node_port = free_port()
    pacs = Orthanc(tmp_path / "orthanc",
                   modalities={"mammo": (AET, "127.0.0.1", node_port)}).start()
    config = node_config(pacs, tmp_path, node_port)
    node = NodeProcess("serve", config, tmp_path / "serve.log").start()
    study_uid, normal_uid = generate_uid(), generate_uid()
    console: list[str] = []
    outside: list[str] = []
    try:
        node.wait_listening(node_port, AET, timeout=180)
        db = Database(f"sqlite:///{tmp_path / 'data' / 'mammo-scp.db'}")
        refs = _send_study_through_the_node(tmp_path / "study", pacs, node_port, study_uid,
                                            STUDY, db)
        # Another woman: OHIF lists (and expands) all studies of the patient it opens.
        _send_study_through_the_node(tmp_path / "normal", pacs, node_port, normal_uid, NORMAL,
                                     db, Patient("TEST^NORMAL", "PID-0002"))
        db.dispose()
        node.stop()
        series = _modalities(pacs, study_uid)
        assert set(series) == {"MG", "SEG", "SR"}
        normal_series = _modalities(pacs, normal_uid)
        assert set(normal_series) == {"MG", "SR"}, normal_series
        assert normal_series.count("SR") == 1  # the no-findings SR, and no SEG
        # A SEG per image with a mask: the two masses, and any region the U-Net marks on an
        # image without one (not every mask is on a mass: docs/model-cards.md).
        n_segs = series.count("SEG")
        assert n_segs >= len(WITH_MASS), n_segs
        labels = _finding_labels(pacs, study_uid)
        assert labels, "the SR holds no finding"
        viewer = ohif.OhifServer(pacs.url, free_port()).start()
        print(ohif.chromium_version())
        try:
            with sync_playwright() as playwright:
                context = playwright.chromium.launch_persistent_context(
                    str(tmp_path / "chromium-profile"), executable_path=ohif.CHROMIUM,
                    headless=True, args=list(ohif.CHROMIUM_ARGS),
                    viewport={"width": 1600, "height": 1000})
                context.set_default_timeout(TIMEOUT_MS)

                def loopback_only(route: Any) -> None:
                    if route.request.url.startswith(f"http://127.0.0.1:{viewer.port}/"):
                        route.continue_()
                    else:
                        outside.append(route.request.url)
                        route.abort()

                context.route("**/*", loopback_only)
                page = context.new_page()
                page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
                page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
                try:
                    errors = _check_viewer(page, viewer.port, study_uid, refs, labels,
                                           n_segs, tmp_path)
                    _check_study_without_findings(page, viewer.port, normal_uid, errors)
                except BaseException:
                    page.screenshot(path=str(tmp_path / "failure.png"))
                    print("screenshot of the failure:", tmp_path / "failure.png")
                    raise
                finally:
                    context.close()
        finally:
            viewer.stop()
    finally:
        node.stop()
        print(node.output()[-3000:])
        pacs.stop()
        print("\n".join(console)[-6000:])
        print("requests kept from leaving the machine:", outside)


def _check_viewer(page: Any, port: int, study_uid: str, refs: dict[str, str],
                  labels: list[str], n_segs: int, tmp_path: Path) -> list[str]:
    """Checks 2 to 5 on the study with masses; returns the list that collects fatal console
    lines from now on."""
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if (
        m.type == "error" or "Error Boundary" in m.text) and FATAL.search(m.text) else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"http://127.0.0.1:{port}/viewer?StudyInstanceUIDs={study_uid}")

    # 1. is done: the study went through the node.
    # 2. The study's series list: the four images, a SEG per image with a mass, the SR.
    page.get_by_text("AI mass measurements", exact=True).wait_for()
    seg_entries = page.get_by_text("AI mass segmentation", exact=True)
    _poll(lambda: seg_entries.count() == n_segs, f"the {n_segs} SEG series in the study list")
    _poll(lambda: page.get_by_text("MG", exact=True).count() == 4, "the four MG thumbnails")
    _dismiss_banners(page)

    # 3. Each SEG: a segmentation "Mass"; on an image with a mass, over its truth circle.
    shown: set[str] = set()
    for number in range(n_segs):
        seg_entries.nth(number).dblclick()
        page.get_by_text("Do you want to open this Segmentation?").wait_for()
        page.get_by_role("button", name="Yes").click()
        state = _poll(partial(_with_segmentations, page, number + 1),
                      "OHIF to load the SEG", timeout=120)
        assert all(s["segments"] == ["Mass"] for s in state["segmentations"]), state
        _open_panel(page, "panelSegmentation-btn", page.get_by_text("Mass", exact=True))
        page.wait_for_load_state("networkidle")

        ref = refs[_sop_of(page)]
        assert ref not in shown, f"SEG {number} opened on {ref} again"
        shown.add(ref)
        if ref not in WITH_MASS:  # a region the U-Net marks on an image without a mass
            continue
        probe = _on_screen(page, mias_masses(ref)[0])
        with_overlay = _poll(partial(_red_region, page, probe, 0.5, True),
                             f"the red Mass overlay on {ref}")
        segmentation_id = state["segmentations"][-1]["id"]
        _set_visible(page, probe.viewport_id, segmentation_id, False)
        without = _poll(partial(_red_region, page, probe, 0.05, False),
                        f"the overlay on {ref} to hide")
        inside = _disk(with_overlay.shape, 0.0, 0.7)
        far = _disk(with_overlay.shape, 2.2, 3.0)
        changed = np.abs(with_overlay - without).sum(axis=-1) > 30
        assert changed[inside].mean() > 0.8, f"{ref}: overlay not over the mass"
        assert changed[far].mean() < 0.1, f"{ref}: overlay spills far beyond the mass"
        _set_visible(page, probe.viewport_id, segmentation_id, True)
        _poll(partial(_red_region, page, probe, 0.5, True),
              f"the overlay on {ref} to show again")
        if ref == "mdb012":
            shot = tmp_path / "ohif-seg.png"
            page.screenshot(path=str(shot))
            if os.environ.get("MAMMO_DOCS_SCREENSHOT_OHIF"):
                _save_small(shot, Path(os.environ["MAMMO_DOCS_SCREENSHOT_OHIF"]))
    assert shown >= set(WITH_MASS), f"SEGs opened on {sorted(shown)}"

    # 4. The SR: its findings drawn, then tracked (the Measurements panel), no parsing errors.
    if not _open_sr(page, errors, draw_timeout_ms=45_000):
        # Now and then (1 run in 11 here, 4 in a row earlier, both on 2026-12-02) OHIF 3.13
        # shows the report's image without its findings (console: "Measurement is preview,
        # skipping"); a radiologist reloads the viewer, and so does the test, once.
        page.goto(f"http://127.0.0.1:{port}/viewer?StudyInstanceUIDs={study_uid}")
        page.get_by_text("AI mass measurements", exact=True).wait_for()
        _dismiss_banners(page)
        assert _open_sr(page, errors, draw_timeout_ms=TIMEOUT_MS), \
            "OHIF drew none of the SR's findings, twice (see the annotations printed)"
    page.wait_for_timeout(3000)
    page.get_by_role("button", name="Yes").click()
    # Each finding becomes a tracked measurement labelled with its Comment.
    tracked = _poll(lambda: (found := _tracked_labels(page)) and sorted(found) == labels
                    and found, "the findings to become tracked measurements", timeout=120)
    print("tracked measurements:", tracked)
    _open_panel(page, "trackedMeasurements-btn", page.get_by_text(labels[0], exact=True))
    for label in labels:
        assert page.get_by_text(label, exact=True).count() >= 1, f"{label!r} not in the panel"
    shot = tmp_path / "ohif-sr.png"
    page.screenshot(path=str(shot))
    if os.environ.get("MAMMO_DOCS_SCREENSHOT_OHIF_SR"):
        _save_small(shot, Path(os.environ["MAMMO_DOCS_SCREENSHOT_OHIF_SR"]))
    page.wait_for_load_state("networkidle")
    assert not errors, errors
    assert page.get_by_text("Something went wrong").count() == 0
    return errors


def _open_sr(page: Any, errors: list[str], draw_timeout_ms: int) -> bool:
    """Open the SR from the study list; True once its findings are drawn (each finding's box
    with its measurements), False (with OHIF's annotations printed) if they are not."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.get_by_text("AI mass measurements", exact=True).dblclick()
    prompt = page.get_by_text("Do you want to continue tracking measurements for this study?")
    _poll(lambda: bool(prompt.count() or errors), "OHIF to load the SR", timeout=120)
    assert not errors, f"OHIF could not load the SR (docs/ohif.md, known limitations): {errors}"
    # Answer only once the SR viewport has its image: answered earlier, OHIF sometimes takes
    # the findings for previews and never draws them.
    page.wait_for_load_state("networkidle")
    _poll(lambda: page.evaluate("""() => window.services.displaySetService
        .getActiveDisplaySets().some(d => d.Modality === 'SR' && d.isLoaded)"""),
          "OHIF to load the SR", timeout=120)
    drawn = [page.get_by_text(re.compile(line)).first for line in (
        r"Probability of cancer: \d+\.\d\d %", r"Certainty of Finding: \d+\.\d\d %")]
    try:
        for text in drawn:
            text.wait_for(timeout=draw_timeout_ms)
        return True
    except PlaywrightTimeout:
        pass
    print("the SR's findings are not drawn; OHIF's annotations and viewports:", page.evaluate(
        """() => {
        const tools = window.cornerstoneTools;
        const engine = window.cornerstone.getRenderingEngines()[0];
        const viewports = engine.getViewports().map(v => [v.id, v.getCurrentImageId(),
            v.getActors().length, tools.ToolGroupManager.getToolGroupForViewport(v.id,
              engine.id)?.hasTool('DICOMSRDisplay')]);
        const annotations = tools.annotation.state.getAllAnnotations().map(a => [
            a.metadata.toolName, a.metadata.referencedImageId, a.isPreview, a.isVisible,
            a.invalidated]);
        engine.render();  // draw once more: does a later render show them?
        tools.utilities.triggerAnnotationRenderForViewportIds(
            engine.getViewports().map(v => v.id));
        return {viewports, annotations};
    }"""))
    try:
        drawn[0].wait_for(timeout=10_000)
        print("the SR's findings are drawn after one more render")
        return True
    except PlaywrightTimeout:
        return False


def _tracked_labels(page: Any) -> list[str]:
    """The labels of the measurements OHIF tracks."""
    return list(page.evaluate("""() => window.services.measurementService
        .getMeasurements().map(m => m.label)"""))


def _finding_labels(pacs: Orthanc, study_uid: str) -> list[str]:
    """The Comment (the one-line summary) of every finding in the study's SR, sorted."""
    found = pacs.post("/tools/find", {"Level": "Instance",
                                      "Query": {"StudyInstanceUID": study_uid,
                                                "Modality": "SR"}})
    assert len(found) == 1, found
    sr = dcmread(io.BytesIO(pacs.file(found[0])))
    labels: list[str] = []

    def walk(items: Any) -> None:
        for item in items:
            if (item.ValueType == "TEXT"
                    and item.ConceptNameCodeSequence[0].CodeValue == codes.COMMENT.value):
                labels.append(str(item.TextValue))
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return sorted(labels)


def _modalities(pacs: Orthanc, study_uid: str) -> list[str]:
    """The modality of each of the study's series in the PACS."""
    found = pacs.post("/tools/find", {"Level": "Series", "Expand": True,
                                      "Query": {"StudyInstanceUID": study_uid}})
    return [series["MainDicomTags"]["Modality"] for series in found]


def _check_study_without_findings(page: Any, port: int, study_uid: str,
                                  errors: list[str]) -> None:
    """The normal study: its four images and our no-findings SR, which opens as text saying
    that the study was analysed, by which models, with no finding; no error."""
    page.goto(f"http://127.0.0.1:{port}/viewer?StudyInstanceUIDs={study_uid}")
    page.get_by_text("AI mass analysis", exact=True).wait_for()
    _poll(lambda: page.get_by_text("MG", exact=True).count() >= 4, "the four MG thumbnails")
    page.wait_for_load_state("networkidle")
    assert page.get_by_text("AI mass segmentation", exact=True).count() == 0
    assert page.get_by_text("AI mass measurements", exact=True).count() == 0
    page.get_by_text("AI mass analysis", exact=True).dblclick()
    statement = page.get_by_text(re.compile(r"No finding: AI mass detection and segmentation "
                                            r"analysed 4 image\(s\) .* with \S+ \S+ and"))
    _poll(lambda: bool(statement.count() or errors), "OHIF to show the no-findings SR")
    assert not errors, errors
    assert page.get_by_text("Something went wrong").count() == 0


def _open_panel(page: Any, button: str, shown: Any) -> None:
    """Open the right-hand panel behind ``button`` unless ``shown`` is already visible."""
    if not (shown.count() and shown.first.is_visible()):
        page.locator(f'[data-cy="{button}"]').click()
    shown.first.wait_for()


def _sop_of(page: Any) -> str:
    image_id = _viewport_state(page)["viewports"][0]["imageId"]
    found = re.search(r"/instances/([0-9.]+)/", image_id)
    assert found, image_id
    return found.group(1)


def _set_visible(page: Any, viewport_id: str, segmentation_id: str, visible: bool) -> None:
    page.evaluate("""([viewportId, segmentationId, visible]) =>
        window.services.segmentationService.setSegmentVisibility(
            viewportId, segmentationId, 1, visible)""", [viewport_id, segmentation_id, visible])


def _save_small(shot: Path, target: Path) -> None:
    """A downscaled copy (the README's picture stays small)."""
    image = Image.open(shot).convert("RGB")
    image.thumbnail((1000, 1000))
    image.save(target, optimize=True)
