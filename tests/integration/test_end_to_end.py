"""The whole path with a real PACS: storescu -> mammo-scp serve (shipped models) -> Orthanc.

Orthanc (Debian package) is the site PACS and knows the node as a modality. A 4-view study
of real mini-MIAS images goes to the node; the node's SEG and SR must arrive in the same
study in Orthanc, reference their sources, and pass dciodvfy as Orthanc stored them.
"""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from mammo_scp.dicom import SopClass
from tests.support.dciodvfy import run_dciodvfy
from tests.support.mg import FOUR_VIEWS
from tests.support.mias import mias_dataset
from tests.support.orthanc import Orthanc, node_config
from tests.support.peers import NodeProcess, free_port, storescu, wait_for

AET = "MAMMO_SCP"
# Two women of mini-MIAS (right = odd, left = even); 010 and 012 carry a benign mass.
STUDY = {("R", "CC"): "mdb009", ("L", "CC"): "mdb010", ("R", "MLO"): "mdb011",
         ("L", "MLO"): "mdb012"}


def _referenced_uids(items: Iterator[Dataset] | list[Dataset]) -> set[str]:
    """Every ReferencedSOPInstanceUID anywhere below these items."""
    found = set()
    for item in items:
        for element in item.iterall():
            if element.keyword == "ReferencedSOPInstanceUID":
                found.add(str(element.value))
    return found


def test_study_goes_through_the_node_into_orthanc(tmp_path: Path) -> None:
    node_port = free_port()
    pacs = Orthanc(tmp_path / "orthanc",
                   modalities={"mammo": (AET, "127.0.0.1", node_port)}).start()
    http_port = free_port()
    config = node_config(pacs, tmp_path, node_port, http_port=http_port)
    node = NodeProcess("serve", config, tmp_path / "serve.log").start()
    try:
        node.wait_listening(node_port, AET, timeout=180)
        study_uid = generate_uid()
        files, sources = [], set()
        for number, (laterality, view) in enumerate(FOUR_VIEWS, start=1):
            ds = mias_dataset(STUDY[(laterality, view)], view, study_uid=study_uid,
                              instance_number=number)
            path = tmp_path / f"{laterality}{view}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
            sources.add(str(ds.SOPInstanceUID))
        sent = storescu(node_port, AET, files)
        assert sent.stderr.count("Received Store Response (Success)") == 4, sent.stderr

        def delivered_series() -> dict[str, list[str]] | None:
            found = pacs.post("/tools/find", {"Level": "Study",
                                              "Query": {"StudyInstanceUID": study_uid}})
            if not found:
                return None
            series: dict[str, list[str]] = {}
            for series_id in pacs.get(f"/studies/{found[0]}")["Series"]:
                info = pacs.get(f"/series/{series_id}")
                series.setdefault(info["MainDicomTags"]["Modality"], []).extend(
                    info["Instances"])
            return series if "SR" in series else None

        series = wait_for(delivered_series, 300, interval=1.0, what="the SR in Orthanc")
        # The SR is sent last in the job's association: once it is there, so are the SEGs.

        # serve's /metrics counts what its SCP received and what its worker process did.
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        assert re.search(r'^mammo_instances_received_total\{status="success"\} 4\.0$', metrics,
                         re.M), metrics
        assert re.search(r'^mammo_stage_duration_seconds_count\{stage="analyze"\} 1\.0$',
                         metrics, re.M), metrics
        assert re.search(r'^mammo_model_inference_seconds_count\{model="[^"]+"\} 4\.0$',
                         metrics, re.M), metrics

        # What an admin sees without a viewer: the job's images with the overlay drawn.
        picture = tmp_path / "preview.png"
        preview = subprocess.run([sys.executable, "-m", "mammo_scp", "preview", "1", "--out",
                                  str(picture), "--config", str(config)],
                                 capture_output=True, text=True, timeout=120)
        assert preview.returncode == 0, preview.stderr
        assert "4 image(s)" in preview.stdout
        drawn = cv2.imread(str(picture))
        assert drawn is not None and drawn.shape[1] > 2 * drawn.shape[0]  # four side by side

        stored: dict[str, list[Path]] = {}  # what Orthanc keeps, as files
        for kind, instance_ids in series.items():
            for instance_id in instance_ids:
                path = tmp_path / f"{kind}-{instance_id}.dcm"
                path.write_bytes(pacs.file(instance_id))
                stored.setdefault(kind, []).append(path)
    finally:
        node.stop()
        print(node.output()[-5000:])
        pacs.stop()

    # Only our objects (the images went to the node), and a SEG for the segmented masses.
    assert set(series) == {"SEG", "SR"}, f"series in Orthanc: {sorted(series)}"
    for kind, paths in stored.items():
        for path in paths:
            verdict = run_dciodvfy(path)
            print(kind, verdict.warnings)
            assert not verdict.errors, verdict.errors
            ds = dcmread(path)
            assert str(ds.StudyInstanceUID) == study_uid
            if kind == "SEG":
                assert ds.SOPClassUID == SopClass.SEGMENTATION
                referenced = _referenced_uids(ds.ReferencedSeriesSequence)
                assert len(referenced) == 1 and referenced <= sources
            else:
                assert ds.SOPClassUID == SopClass.COMPREHENSIVE_3D_SR
                assert _referenced_uids([ds]) >= sources
