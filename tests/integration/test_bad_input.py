"""Bad input over a real association: each gets a named status, or its job records why
the image was not processed; nothing derived from it reaches the PACS; the node keeps
serving."""

from __future__ import annotations

import struct
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from mammo_scp.dicom import StoreStatus
from mammo_scp.jobs.models import Instance
from mammo_scp.jobs.states import InstanceStatus, JobState
from tests.support.inprocess import AET, InProcessNode
from tests.support.mg import MG_FOR_PRESENTATION, MG_FOR_PROCESSING, Patient, make_mg
from tests.support.peers import StoreSCP, echo_ok, free_port, send_file_as_is, wait_for


def send(port: int, ds: Dataset) -> int:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
    assoc = ae.associate("127.0.0.1", port, ae_title=AET)
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()
    return int(status.Status)


def _image(**kwargs: object) -> Dataset:
    return make_mg("R", "CC", study_uid=generate_uid(), **kwargs)  # type: ignore[arg-type]


def _ct_modality() -> Dataset:
    ds = _image()
    ds.Modality = "CT"
    return ds


def _truncated() -> Dataset:
    ds = _image()
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    return ds


def _oversized() -> Dataset:
    ds = _image()
    ds.PixelData = ds.PixelData + bytes(4096)
    return ds


def _rows_mismatch() -> Dataset:
    ds = _image()
    ds.Rows = int(ds.Rows) + 10
    return ds


def _no_pixels() -> Dataset:
    ds = _image()
    del ds.PixelData
    return ds


def _rgb() -> Dataset:
    ds = _image()
    rgb = np.zeros((int(ds.Rows), int(ds.Columns), 3), dtype=np.uint8)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = rgb.tobytes()
    return ds


def _no_laterality() -> Dataset:
    ds = _image()
    del ds.ImageLaterality
    return ds


def _no_view() -> Dataset:
    ds = _image()
    del ds.ViewPosition
    del ds.ViewCodeSequence
    return ds


SKIPPED = [
    ("not MG", _ct_modality, "Modality is CT, not MG"),
    ("For Processing", lambda: _image(sop_class=MG_FOR_PROCESSING), "For Processing image"),
    ("truncated pixel data", _truncated, "pixel data truncated"),
    ("oversized pixel data", _oversized, "pixel data longer than"),
    ("Rows do not match the data", _rows_mismatch, "pixel data truncated"),
    ("missing pixel data", _no_pixels, "no pixel data"),
    ("RGB", _rgb, "colour image (RGB, 3 samples)"),
    ("no laterality", _no_laterality, "no laterality"),
    ("no view", _no_view, "no view"),
]


@pytest.mark.parametrize("make,reason", [c[1:] for c in SKIPPED], ids=[c[0] for c in SKIPPED])
def test_unprocessable_image_is_kept_skipped_and_never_sent(
    make_node: Callable[..., InProcessNode], tmp_path, make: Callable[[], Dataset],
    reason: str,
) -> None:
    pacs = StoreSCP(tmp_path / "pacs", free_port()).start()
    try:
        node = make_node(pacs.port, quiet_period_s=0.5)
        ds = make()
        assert send(node.settings.port, ds) == StoreStatus.SUCCESS
        wait_for(lambda: node.jobs() and node.jobs()[0].state == JobState.SKIPPED, 30,
                 what="the job to be skipped")
        with node.db.session() as session:
            instance = session.scalars(sa.select(Instance)).one()
        assert instance.status == InstanceStatus.SKIPPED
        assert reason in (instance.skip_reason or ""), instance.skip_reason
        assert pacs.files() == []
        assert echo_ok(node.settings.port, AET)
    finally:
        pacs.stop()


@pytest.mark.parametrize("variant", ["MONOCHROME1", "signed", "8-bit"])
def test_unusual_but_valid_images_are_processed(
    make_node: Callable[..., InProcessNode], variant: str
) -> None:
    node = make_node(None, quiet_period_s=0.5)
    if variant == "8-bit":
        ds = _image(bits_stored=8)
    else:
        ds = _image()
        if variant == "MONOCHROME1":
            ds.PhotometricInterpretation = "MONOCHROME1"
        else:
            pixels = np.frombuffer(ds.PixelData, np.uint16).astype(np.int16) - 2048
            ds.PixelRepresentation, ds.PixelData = 1, pixels.tobytes()
            ds.RescaleIntercept = 2048
    assert send(node.settings.port, ds) == StoreStatus.SUCCESS
    wait_for(lambda: node.jobs() and node.jobs()[0].state == JobState.DONE, 30,
             what="the job to be done")
    with node.db.session() as session:
        assert session.scalars(sa.select(Instance.status)).one() == InstanceStatus.PROCESSED


@pytest.mark.parametrize("rows,columns", [(1, 1), (30000, 30000)])
def test_absurd_image_sizes_are_refused(make_node: Callable[..., InProcessNode], rows: int,
                                        columns: int) -> None:
    node = make_node(None, min_image_side=64, max_image_pixels=120_000_000)
    ds = _image(rows=8, cols=8)
    ds.Rows, ds.Columns = rows, columns  # the header claims it; the data need not follow
    assert send(node.settings.port, ds) == StoreStatus.IMAGE_SIZE_REFUSED
    with node.db.session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Instance)) == 0


def test_a_study_that_mixes_patients_is_refused(make_node: Callable[..., InProcessNode],
                                                caplog: pytest.LogCaptureFixture) -> None:
    node = make_node(None)
    study = generate_uid()
    first = make_mg("R", "CC", study_uid=study, patient=Patient("ONE^A", "PID-ONE"))
    second = make_mg("L", "CC", study_uid=study, patient=Patient("TWO^B", "PID-TWO"))
    assert send(node.settings.port, first) == StoreStatus.SUCCESS
    assert send(node.settings.port, second) == StoreStatus.PATIENT_CONFLICT
    assert "already holds another patient's images" in caplog.text
    assert "PID-TWO" not in caplog.text and "PID-ONE" not in caplog.text
    with node.db.session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Instance)) == 1


def _file_bytes(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _meta_end(data: bytes) -> int:
    """Where the dataset starts in a DICOM file: after the preamble, 'DICM' and group 2."""
    (group_length,) = struct.unpack("<I", data[140:144])
    return 144 + group_length


def _deflate_garbage(tmp_path: Path) -> Path:
    ds = _image(rows=64, cols=64)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    data = _file_bytes(ds)
    path = tmp_path / "garbage.dcm"
    path.write_bytes(data[:_meta_end(data)] + b"this is not deflate data" * 8)
    return path


def _deflate_truncated(tmp_path: Path) -> Path:
    ds = _image(rows=64, cols=64)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    data = _file_bytes(ds)
    end = _meta_end(data)
    path = tmp_path / "truncated.dcm"
    path.write_bytes(data[:end + (len(data) - end) // 3])
    return path


def _rows_three_bytes(tmp_path: Path) -> Path:
    data = bytearray(_file_bytes(_image(rows=64, cols=64)))
    at = data.find(b"\x28\x00\x10\x00US\x02\x00")
    data[at:at + 10] = b"\x28\x00\x10\x00US\x03\x00" + data[at + 8:at + 10] + b"\x00"
    path = tmp_path / "rows3.dcm"
    path.write_bytes(bytes(data))
    return path


def _view_code_as_lo(tmp_path: Path) -> Path:
    ds = _image(rows=64, cols=64)
    del ds.ViewCodeSequence
    ds.add(DataElement(0x00540220, "LO", "CC"))
    path = tmp_path / "viewlo.dcm"
    path.write_bytes(_file_bytes(ds))
    return path


UNPARSABLE = [
    ("deflated payload that is not deflate data", _deflate_garbage, "does not inflate"),
    ("deflated payload truncated", _deflate_truncated, "does not inflate"),
    ("Rows as a 3-byte US value", _rows_three_bytes, "length of (0028,0010) does not fit"),
    ("ViewCodeSequence encoded as LO", _view_code_as_lo, "ViewCodeSequence is encoded as LO"),
]


@pytest.mark.parametrize("make,reason", [c[1:] for c in UNPARSABLE],
                         ids=[c[0] for c in UNPARSABLE])
def test_unparsable_datasets_are_refused_with_a_reason_and_leave_nothing(
    make_node: Callable[..., InProcessNode], tmp_path: Path, caplog: pytest.LogCaptureFixture,
    make: Callable[[Path], Path], reason: str,
) -> None:
    """Issue 25: these were exceptions in the C-STORE handler (0xC211, a traceback, a
    temporary file left in spool/incoming)."""
    node = make_node(None)
    path = make(tmp_path)
    syntax = read_file_meta_info(path).TransferSyntaxUID
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(MG_FOR_PRESENTATION, str(syntax))
    assoc = ae.associate("127.0.0.1", node.settings.port, ae_title=AET)
    assert assoc.is_established
    status = send_file_as_is(assoc, path)
    assoc.release()
    assert int(status.Status) == StoreStatus.CANNOT_UNDERSTAND
    assert reason in caplog.text
    assert "Traceback" not in caplog.text
    incoming = Path(node.settings.spool) / "incoming"
    assert [p for p in incoming.rglob("*") if p.is_file()] == []
    with node.db.session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Instance)) == 0
    assert echo_ok(node.settings.port, AET)
