"""Delivery of result objects to dcmtk's storescp: on time, late, dead-lettered and retried."""

from __future__ import annotations

import time
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid

from mammo_scp.config import DicomDestination
from mammo_scp.jobs.service import retry_job
from mammo_scp.jobs.states import CommitmentState, DeliveryState, JobState
from mammo_scp.pipeline import default_pipeline
from mammo_scp.send.cstore import send_files
from tests.support.inprocess import InProcessNode
from tests.support.mg import four_view_study
from tests.support.orthanc import Orthanc
from tests.support.peers import StoreSCP, free_port, storescu, wait_for
from tests.support.stub_analyzer import FindsNothing, StubAnalyzer

AET = "MAMMO_SCP"


def _send_study(node: InProcessNode, directory: Path) -> list[Path]:
    _, files = four_view_study(directory)
    sent = storescu(node.settings.port, AET, files)
    assert sent.returncode == 0, sent.stderr
    return files


def test_results_reach_storescp(make_node, tmp_path: Path) -> None:
    pacs = StoreSCP(tmp_path / "pacs", free_port()).start()
    try:
        node = make_node(pacs.port)
        files = _send_study(node, tmp_path / "study")
        wait_for(lambda: [j for j in node.jobs() if j.state == JobState.DONE], 30,
                 what="the job to be delivered")
        received = pacs.files()
        assert len(received) == len(files) == 4
        sources = {str(dcmread(f).SOPInstanceUID) for f in files}
        results = {str(dcmread(f).SOPInstanceUID) for f in received}
        assert not sources & results
        assert all(d.state == DeliveryState.DELIVERED and d.attempts == 1
                   for d in node.deliveries())
    finally:
        pacs.stop()


def test_delivery_is_retried_until_a_late_destination_starts(make_node, tmp_path: Path) -> None:
    pacs = StoreSCP(tmp_path / "pacs", free_port())
    node = make_node(pacs.port, delivery_max_attempts=20)
    _send_study(node, tmp_path / "study")
    wait_for(lambda: any(d.attempts >= 2 for d in node.deliveries()), 30,
             what="failed delivery attempts")
    assert all(d.state != DeliveryState.DELIVERED for d in node.deliveries())
    assert node.jobs()[0].state == JobState.DELIVERING
    pacs.start()
    try:
        wait_for(lambda: node.jobs()[0].state == JobState.DONE, 60, what="late delivery")
        assert len(pacs.files()) == 4
        assert all(d.state == DeliveryState.DELIVERED for d in node.deliveries())
        assert max(d.attempts for d in node.deliveries()) >= 2
    finally:
        pacs.stop()


def test_dead_letter_then_jobs_retry_resends(make_node, tmp_path: Path) -> None:
    pacs = StoreSCP(tmp_path / "pacs", free_port())
    node = make_node(pacs.port, delivery_max_attempts=2)
    _send_study(node, tmp_path / "study")
    wait_for(lambda: node.jobs() and node.jobs()[0].state == JobState.DEAD_LETTER, 30,
             what="the job to be dead-lettered")
    deliveries = node.deliveries()
    assert all(d.state == DeliveryState.DEAD and d.attempts == 2 for d in deliveries)
    assert all("association" in (d.last_error or "") for d in deliveries)
    pacs.start()
    try:
        retry_job(node.db, node.jobs()[0].id)
        wait_for(lambda: node.jobs()[0].state == JobState.DONE, 30, what="the retried delivery")
        assert len(pacs.files()) == 4
    finally:
        pacs.stop()


def test_results_go_back_to_the_calling_ae(make_node, tmp_path: Path) -> None:
    caller = StoreSCP(tmp_path / "modality", free_port(), aet="STORESCU").start()
    try:
        node = make_node(None, destinations=[{
            "name": "back", "kind": "caller",
            "peers": {"STORESCU": {"host": "127.0.0.1", "port": caller.port}}}])
        _send_study(node, tmp_path / "study")  # storescu calls as STORESCU
        wait_for(lambda: node.jobs() and node.jobs()[0].state == JobState.DONE, 30,
                 what="delivery back to the caller")
        assert len(caller.files()) == 4
    finally:
        caller.stop()


def test_gsps_go_only_to_destinations_that_want_them(make_node, tmp_path: Path) -> None:
    plain = StoreSCP(tmp_path / "plain", free_port(), aet="PLAIN").start()
    viewer = StoreSCP(tmp_path / "viewer", free_port(), aet="VIEWER").start()
    try:
        pipeline = default_pipeline(StubAnalyzer(), gsps=True)  # type: ignore[arg-type]
        node = make_node(None, pipeline, destinations=[
            {"name": "plain", "ae_title": "PLAIN", "host": "127.0.0.1", "port": plain.port},
            {"name": "viewer", "ae_title": "VIEWER", "host": "127.0.0.1", "port": viewer.port,
             "gsps": True}])
        files = _send_study(node, tmp_path / "study")
        wait_for(lambda: node.jobs() and node.jobs()[0].state == JobState.DONE, 60,
                 what="the job to be delivered")

        def modalities(pacs: StoreSCP) -> list[str]:
            return sorted(str(dcmread(f).Modality) for f in pacs.files())

        # the stub detector finds one mass on each image
        assert modalities(viewer) == sorted(modalities(plain) + ["PR"] * len(files))
        assert "PR" not in modalities(plain)
        sources = {str(dcmread(f).SOPInstanceUID) for f in files}
        referenced = {str(dcmread(f).ReferencedSeriesSequence[0].ReferencedImageSequence[0]
                          .ReferencedSOPInstanceUID)
                      for f in viewer.files() if dcmread(f).Modality == "PR"}
        assert referenced == sources
        assert all(d.state == DeliveryState.DELIVERED for d in node.deliveries())
    finally:
        plain.stop()
        viewer.stop()


def test_a_study_without_findings_gets_its_no_findings_sr(make_node, tmp_path: Path) -> None:
    """Issue 26: "analysed, nothing found" reaches the PACS as an object."""
    pacs = StoreSCP(tmp_path / "pacs", free_port()).start()
    try:
        node = make_node(pacs.port, default_pipeline(FindsNothing(),  # type: ignore[arg-type]
                                                     gsps=True))
        files = _send_study(node, tmp_path / "study")
        wait_for(lambda: node.jobs() and node.jobs()[0].state == JobState.DONE, 60,
                 what="the job to be delivered")
        (received,) = [dcmread(f) for f in pacs.files()]
        assert received.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR
        assert received.StudyInstanceUID == dcmread(files[0]).StudyInstanceUID
        comment = [item.TextValue for item in received.ContentSequence
                   if item.ConceptNameCodeSequence[0].CodeValue == "121106"]
        assert comment and comment[0].startswith("No finding:")
    finally:
        pacs.stop()


def test_unknown_calling_ae_is_dead_at_once_with_the_reason(make_node, tmp_path: Path) -> None:
    node = make_node(None, delivery_max_attempts=5, destinations=[{
        "name": "back", "kind": "caller", "peers": {"OTHER": {"host": "127.0.0.1", "port": 1}}}])
    _send_study(node, tmp_path / "study")
    wait_for(lambda: node.jobs() and node.jobs()[0].state == JobState.DEAD_LETTER, 30,
             what="the job to be dead-lettered")
    deliveries = node.deliveries()
    assert all(d.attempts == 1 for d in deliveries)
    assert "calling AE 'STORESCU' is not in the peers" in (deliveries[0].last_error or "")


def test_results_reach_orthanc_by_stow_rs(make_node, tmp_path: Path) -> None:
    pacs = Orthanc(tmp_path / "orthanc").start()
    try:
        node = make_node(None, destinations=[{"name": "web", "kind": "dicomweb",
                                              "url": pacs.dicomweb_url}])
        files = _send_study(node, tmp_path / "study")
        wait_for(lambda: node.jobs() and node.jobs()[0].state == JobState.DONE, 60,
                 what="STOW-RS delivery")
        stored = {pacs.get(f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"]
                  for i in pacs.get("/instances")}
        expected = {str(generate_uid(entropy_srcs=[str(dcmread(f).SOPInstanceUID), "result"]))
                    for f in files}
        assert stored == expected
    finally:
        pacs.stop()


def test_storage_commitment_is_requested_and_recorded(make_node, tmp_path: Path) -> None:
    node_port = free_port()
    pacs = Orthanc(tmp_path / "orthanc",
                   modalities={"mammo": (AET, "127.0.0.1", node_port)}).start()
    try:
        node = make_node(None, port=node_port, destinations=[{
            "name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1",
            "port": pacs.dicom_port, "storage_commitment": True}])
        _send_study(node, tmp_path / "study")
        wait_for(lambda: node.jobs() and node.jobs()[0].state == JobState.DONE, 60,
                 what="delivery to Orthanc")
        wait_for(lambda: all(d.commitment == CommitmentState.COMMITTED
                             for d in node.deliveries()), 60,
                 what="Orthanc's storage commitment report")
        deliveries = node.deliveries()
        assert len(deliveries) == 4
        assert len({d.commitment_uid for d in deliveries}) == 1  # one request per batch
        assert all(d.commitment_at is not None for d in deliveries)
    finally:
        pacs.stop()


def test_a_destination_with_nagle_on_answers_each_object_at_once(tmp_path: Path) -> None:
    """dcmtk (storescp here, and PACS built on it) leaves Nagle's algorithm on: it holds
    each C-STORE response's body until the node acknowledges its header. The node
    acknowledges at once (TCP_QUICKACK); with Linux's delayed acknowledgement each of the
    four stores waited ~40 ms (>= 160 ms in all; ~25 ms now)."""
    _, files = four_view_study(tmp_path / "study")
    pacs = StoreSCP(tmp_path / "pacs", free_port()).start()
    destination = DicomDestination(name="pacs", ae_title=pacs.aet, host="127.0.0.1",
                                   port=pacs.port)
    try:
        times = []
        for _ in range(5):
            started = time.perf_counter()
            outcomes = send_files(destination, AET, files, timeout_s=10)
            times.append(time.perf_counter() - started)
            assert [o.error for o in outcomes] == [None] * 4
    finally:
        pacs.stop()
    assert min(times) < 0.1, [f"{t * 1000:.0f} ms" for t in times]
