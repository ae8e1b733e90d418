"""Fuzz the SCP with malformed datasets over real associations (hypothesis).

At least 1000 datasets, each a valid MG image with some attributes dropped or replaced
by hostile values (path traversal and absolute paths in UIDs, absurd sizes, wrong
lengths, junk strings). The node must answer every request with a status, keep
answering C-ECHO, and write nothing outside its spool.

One exception, in pynetdicom rather than the node: a C-STORE-RQ whose *command* lacks the
mandatory Affected SOP Instance UID (the sender had an empty SOP Instance UID) makes
pynetdicom's chunked receive fail inside its association thread, so that association
ends without a status. Such requests are counted apart; the node keeps serving.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pynetdicom import AE

from tests.support.mg import MG_FOR_PRESENTATION, make_mg
from tests.support.peers import NodeProcess, echo_ok, free_port, write_config

AET = "MAMMO_SCP"
SENT_AT_LEAST = int(os.environ.get("MAMMO_FUZZ_DATASETS", "1000"))
# Some generated datasets cannot even be encoded by pynetdicom (they never reach the node);
# generate enough that at least SENT_AT_LEAST do.
EXAMPLES = SENT_AT_LEAST * 2
MARKER = f"fuzz{uuid.uuid4().hex[:8]}"  # in every hostile name, to find files it made

HOSTILE_TEXT = st.sampled_from([
    f"../../{MARKER}", f"/tmp/{MARKER}", f"..\\..\\{MARKER}", f"1.2.3/../../{MARKER}",
    "", " ", "1..2", "01.2", "1.2." + "9" * 70, f"{MARKER}\x00x", "1.2.3\n4", "ü.1",
])
UID_KEYWORDS = ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"]
DROPPABLE = ["StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns", "PixelData",
             "ImageLaterality", "ViewPosition", "ViewCodeSequence", "PatientID",
             "BitsAllocated", "PhotometricInterpretation", "Modality"]


@st.composite
def malformed(draw: st.DrawFn) -> Dataset:
    ds = make_mg("R", "CC", study_uid="1.2.826.0.1.3680043.8.498.7", rows=16, cols=16)
    for keyword in draw(st.lists(st.sampled_from(DROPPABLE), max_size=4, unique=True)):
        if keyword in ds:
            delattr(ds, keyword)
    for keyword in draw(st.lists(st.sampled_from(UID_KEYWORDS), max_size=3, unique=True)):
        setattr(ds, keyword, draw(HOSTILE_TEXT))
    if draw(st.booleans()):
        ds.Rows = draw(st.integers(0, 65535))
        ds.Columns = draw(st.integers(0, 65535))
    if draw(st.booleans()) and "PixelData" in ds:
        ds.PixelData = draw(st.binary(max_size=600))
    if draw(st.booleans()):
        ds.ImageLaterality = draw(st.sampled_from(["", "X", "B", "LR", "l"]))
    return ds


class Sender:
    """One association, renewed whenever the node ends it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.assoc = None
        self.sent = 0
        self.answered = 0
        self.without_command_uid = 0
        self.statuses: dict[int, int] = {}

    def send(self, ds: Dataset) -> None:
        if self.assoc is None or not self.assoc.is_established:
            ae = AE(ae_title="FUZZER")
            ae.add_requested_context(MG_FOR_PRESENTATION)
            self.assoc = ae.associate("127.0.0.1", self.port, ae_title=AET)
            assert self.assoc.is_established, "the node stopped accepting associations"
        sop_uid = str(ds.get("SOPInstanceUID", "") or "1.2.3")
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        if not str(ds.get("SOPInstanceUID", "") or "").strip():
            self.without_command_uid += 1
            return
        try:
            status = self.assoc.send_c_store(ds)
        except (ValueError, AttributeError, TypeError, OSError):
            return  # pynetdicom itself refused to encode it: nothing reached the node
        self.sent += 1
        if status and "Status" in status:
            self.answered += 1
            code = int(status.Status)
            self.statuses[code] = self.statuses.get(code, 0) + 1


@pytest.fixture(scope="module")
def fuzz_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    root = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    config = write_config(root / "node.toml", {
        "port": port, "bind_address": "127.0.0.1", "data_dir": str(root / "data"),
        "database_url": f"sqlite:///{root / 'data' / 'node.db'}", "workers": 0,
        "min_free_mb": 1, "log_level": "WARNING"})
    node = NodeProcess("serve", config, root / "serve.log").start()
    node.wait_listening(port, AET)
    yield port, root
    assert node.stop() == 0, node.output()[-3000:]


def test_malformed_datasets_get_answers_and_write_nothing_outside_the_spool(
    fuzz_node: tuple[int, Path]
) -> None:
    port, root = fuzz_node
    sender = Sender(port)
    saved = pydicom_config.settings.writing_validation_mode
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(malformed())
    def fuzz(ds: Dataset) -> None:
        sender.send(ds)

    try:
        fuzz()
    finally:
        pydicom_config.settings.writing_validation_mode = saved
        if sender.assoc is not None and sender.assoc.is_established:
            sender.assoc.release()
    print(f"generated {EXAMPLES} datasets, {sender.sent} sent, {sender.answered} answered "
          f"({sender.without_command_uid} not sent: no SOP Instance UID for the command): "
          + ", ".join(f"0x{k:04X} x{v}" for k, v in sorted(sender.statuses.items())))
    assert sender.sent >= SENT_AT_LEAST
    assert sender.answered == sender.sent, "a request went unanswered"
    assert echo_ok(port, AET)
    spool = root / "data"
    outside = [p for p in root.rglob("*") if p.is_file() and spool not in p.parents
               and p.name not in ("node.toml", "serve.log")]
    assert outside == []
    escaped = [*Path("/tmp").glob(f"*{MARKER}*"), *Path.cwd().glob(f"*{MARKER}*"),
               *root.parent.glob(f"**/*{MARKER}*")]
    assert escaped == [], "a hostile name made a file"
