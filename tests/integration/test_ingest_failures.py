"""What a sender is told when the node cannot or must not keep an instance, over a real
association: nothing half-written remains and the node keeps serving."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydicom.dataset import Dataset
from pynetdicom import AE

from mammo_scp.config import Settings
from mammo_scp.db import Database
from mammo_scp.dicom import NO_DELAY, StoreStatus
from mammo_scp.jobs.models import Instance
from mammo_scp.receive.scp import start_scp
from mammo_scp.store.ingest import Ingestor
from mammo_scp.store.spool import Spool
from tests.support.mg import MG_FOR_PRESENTATION, make_mg
from tests.support.peers import echo_ok, free_port

AET = "MAMMO_SCP"


class Scp:
    def __init__(self, tmp_path: Path, db: Database, min_free_mb: int = 1) -> None:
        self.spool = Spool(tmp_path / "spool")
        self.spool.prepare()
        self.db = db
        self.settings = Settings(port=free_port(), bind_address="127.0.0.1",
                                 min_free_mb=min_free_mb)
        self.ingestor = Ingestor(db, self.spool, min_free_mb)
        self.server = start_scp(self.settings, self.ingestor)

    def send(self, ds: Dataset) -> int:
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(MG_FOR_PRESENTATION)
        assoc = ae.associate("127.0.0.1", self.settings.port, ae_title=AET)
        assert assoc.is_established
        status = assoc.send_c_store(ds)
        assoc.release()
        return int(status.Status)

    def files(self) -> list[Path]:
        return [p for p in self.spool.root.rglob("*") if p.is_file()]

    def rows(self) -> int:
        with self.db.session() as session:
            return int(session.scalar(sa.select(sa.func.count()).select_from(Instance)) or 0)


@pytest.fixture
def scp_factory(tmp_path: Path) -> Iterator[object]:
    started: list[Scp] = []
    saved = tempfile.tempdir

    def make(db: Database, **kwargs: int) -> Scp:
        scp = Scp(tmp_path, db, **kwargs)
        started.append(scp)
        return scp

    yield make
    for scp in started:
        scp.server.shutdown()
    tempfile.tempdir = saved


@pytest.fixture
def scp(scp_factory, db: Database) -> Scp:  # type: ignore[no-untyped-def]
    return scp_factory(db)


def _image(**kwargs: str) -> Dataset:
    return make_mg("R", "CC", study_uid="1.2.826.0.1.3680043.8.498.1", rows=32, cols=24,
                   **kwargs)


def test_hostile_uid_is_refused_and_writes_nothing(scp: Scp, tmp_path: Path) -> None:
    ds = _image()
    ds.StudyInstanceUID = "../../../../escaped"
    assert scp.send(ds) == StoreStatus.INVALID_UID
    assert not list(tmp_path.parent.rglob("escaped*"))
    assert scp.files() == [] and scp.rows() == 0
    assert echo_ok(scp.settings.port, AET)


def test_dataset_uid_differing_from_the_command_is_refused(scp: Scp, tmp_path: Path) -> None:
    ds = _image()
    received = scp.spool.incoming / "received.dcm"
    ds.save_as(received, enforce_file_format=True)
    status = scp.ingestor.ingest(received, command_sop_class=MG_FOR_PRESENTATION,
                                 command_sop_instance="1.2.3.4.5",
                                 transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
                                 calling_ae="TESTSCU")
    assert status == StoreStatus.DATASET_DOES_NOT_MATCH
    assert scp.rows() == 0


@pytest.mark.parametrize("content,expected", [
    (b"not a DICOM file at all", StoreStatus.CANNOT_UNDERSTAND),
    (b"\0" * 128 + b"DICM" + b"\xff" * 64, StoreStatus.INVALID_UID),  # no UIDs to be found
])
def test_unusable_dataset_is_refused(scp: Scp, content: bytes, expected: StoreStatus) -> None:
    received = scp.spool.incoming / "garbage.dcm"
    received.write_bytes(content)
    status = scp.ingestor.ingest(received, command_sop_class=MG_FOR_PRESENTATION,
                                 command_sop_instance="1.2.3",
                                 transfer_syntax="1.2.840.10008.1.2.1", calling_ae="TESTSCU")
    assert status == expected
    assert scp.rows() == 0


def test_database_down_means_out_of_resources_and_no_file(scp_factory, tmp_path: Path) -> None:
    dead = Database(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none")
    scp = scp_factory(dead)
    assert scp.send(_image()) == StoreStatus.OUT_OF_RESOURCES
    assert scp.files() == []


def test_database_failing_after_the_write_removes_the_file(
    scp: Scp, monkeypatch: pytest.MonkeyPatch
) -> None:
    def lost_connection(*_args: object) -> None:
        raise sa.exc.OperationalError("INSERT", {}, Exception("server closed the connection"))
    monkeypatch.setattr(scp.ingestor, "_index", lost_connection)
    assert scp.send(_image()) == StoreStatus.OUT_OF_RESOURCES
    assert scp.files() == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_spool_means_out_of_resources(scp: Scp) -> None:
    scp.spool.instances.chmod(0o500)
    try:
        assert scp.send(_image()) == StoreStatus.OUT_OF_RESOURCES
    finally:
        scp.spool.instances.chmod(0o700)
    assert scp.rows() == 0


def test_disk_write_failure_means_out_of_resources(
    scp: Scp, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(*_args: object) -> None:
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("mammo_scp.store.spool.os.replace", full_disk)
    assert scp.send(_image()) == StoreStatus.OUT_OF_RESOURCES
    assert scp.rows() == 0
    assert [p for p in scp.files() if "instances" in p.parts] == []


def test_free_space_floor_refuses_new_instances(scp_factory, db: Database) -> None:
    scp = scp_factory(db, min_free_mb=10**9)
    assert scp.send(_image()) == StoreStatus.OUT_OF_RESOURCES
    assert scp.files() == [] and scp.rows() == 0


def test_both_ends_of_an_association_turn_nagle_off(scp: Scp) -> None:
    """The node's SCP and its SCU send each PDU at once (TCP_NODELAY): with Nagle's
    algorithm on, every C-STORE answer waited for a delayed ACK."""
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(MG_FOR_PRESENTATION)
    plain = ae.associate("127.0.0.1", scp.settings.port, ae_title=AET)
    ours = ae.associate("127.0.0.1", scp.settings.port, ae_title=AET, evt_handlers=[NO_DELAY])
    try:
        assert plain.is_established and ours.is_established
        accepted = scp.server.active_associations
        assert len(accepted) == 2
        for assoc in accepted:  # the SCP side of both
            assert assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert ours.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert not plain.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        plain.release()
        ours.release()
