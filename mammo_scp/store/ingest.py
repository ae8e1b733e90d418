"""Durable ingest of one received instance: file on disk, row committed, then Success.

The C-STORE handler hands over the temporary file pynetdicom wrote (the raw
dataset in DICOM file format, never decoded in memory) and returns whatever
status :meth:`Ingestor.ingest` gives. Only header attributes are read here;
pixel data waits for the worker.
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException

from mammo_scp.db import Database
from mammo_scp.dicom import StoreStatus, is_valid_uid, view_of
from mammo_scp.jobs.models import Instance, Study, utcnow
from mammo_scp.metrics import INSTANCES_RECEIVED
from mammo_scp.store.spool import Spool

logger = logging.getLogger(__name__)

_HEADER_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID",
    "ImageLaterality", "Laterality", "ViewPosition", "ViewCodeSequence", "Rows", "Columns",
]


@dataclass(frozen=True)
class InstanceHeader:
    """What the node needs to know about an instance before its pixels are touched."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    patient_id: str | None
    laterality: str | None
    view: str | None
    rows: int | None
    columns: int | None


@dataclass(frozen=True)
class ImageLimits:
    """The image sizes the node accepts (a 1x1 'mammogram' or a 30000x30000 one is refused)."""

    min_side: int
    max_pixels: int

    def problem(self, header: InstanceHeader) -> str | None:
        if header.rows is None or header.columns is None:
            return None  # no image (the load stage says so); not a size problem
        if min(header.rows, header.columns) < self.min_side:
            return (f"image of {header.rows} x {header.columns} is smaller than "
                    f"min_image_side = {self.min_side}")
        if header.rows * header.columns > self.max_pixels:
            return (f"image of {header.rows} x {header.columns} exceeds "
                    f"max_image_pixels = {self.max_pixels}")
        return None


class RejectedInstance(Exception):
    """The instance cannot be accepted; carries the status and a log-safe reason."""

    def __init__(self, status: StoreStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def laterality_of(ds: Dataset) -> str | None:
    """ImageLaterality (image level), else Laterality (series level); R or L, else None."""
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(ds.get(keyword, "") or "").strip().upper()
        if value in ("R", "L"):
            return value
    return None


def read_header(path: Path) -> InstanceHeader:
    """Parse the header of a received file, raising RejectedInstance when it is unusable.

    Whatever the parse raises (deflated data that does not inflate, a value whose length
    does not fit its VR, an attribute encoded with another VR) is a refusal with the
    reason, never an exception out of the C-STORE handler (pynetdicom would answer 0xC211
    and leave its temporary file behind).
    """
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        _check_vrs(ds)
        return _header(ds)
    except RejectedInstance:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure is the sender's data
        raise RejectedInstance(StoreStatus.CANNOT_UNDERSTAND,
                               f"dataset cannot be parsed: {_parse_failure(exc)}") from exc


def _parse_failure(exc: Exception) -> str:
    """Why a parse failed, in words that carry no value from the dataset (values may be
    patient data)."""
    if isinstance(exc, zlib.error):
        return f"the deflated dataset does not inflate ({exc})"
    where = _WHERE.search(str(exc))
    if isinstance(exc, BytesLengthException) and where:
        return f"the length of {where[1]} does not fit its VR {where[2]}"
    return type(exc).__name__ + (f" at {where[1]}" if where else "")


_WHERE = re.compile(r"(\([0-9A-Fa-f]{4},[0-9A-Fa-f]{4}\)) according to VR '(\w\w)'")


def _check_vrs(ds: Dataset) -> None:
    """Refuse header attributes the node reads that were sent with another VR than the
    standard's (e.g. ViewCodeSequence as LO)."""
    for keyword in _HEADER_TAGS:
        if keyword not in ds:
            continue
        element = ds[keyword]
        expected = dictionary_VR(element.tag)
        if element.VR not in expected.split(" or "):
            raise RejectedInstance(StoreStatus.CANNOT_UNDERSTAND,
                                   f"{keyword} is encoded as {element.VR}, not {expected}")


def _header(ds: Dataset) -> InstanceHeader:
    uids = {}
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = str(ds.get(keyword, "") or "").strip()
        if not is_valid_uid(value):
            shown = value[:70].encode("unicode_escape").decode("ascii")
            raise RejectedInstance(StoreStatus.INVALID_UID,
                                   f"{keyword} is missing or not a valid UID: {shown!r}")
        uids[keyword] = value
    patient_id = str(ds.get("PatientID", "") or "") or None
    return InstanceHeader(
        sop_class_uid=uids["SOPClassUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        patient_id=patient_id[:64] if patient_id else None,
        laterality=laterality_of(ds),
        view=view_of(ds),
        rows=_int_or_none(ds.get("Rows")),
        columns=_int_or_none(ds.get("Columns")),
    )


def _int_or_none(value: object) -> int | None:
    try:
        return int(value) if value is not None else None  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


class _StoredConcurrently(Exception):
    pass


class _PatientConflict(Exception):
    pass


class Ingestor:
    """Turns a received temporary file into a spooled, indexed instance."""

    def __init__(self, db: Database, spool: Spool, min_free_mb: int,
                 limits: ImageLimits = ImageLimits(min_side=1, max_pixels=10**9),
                 on_stored: Callable[[], None] | None = None) -> None:
        self.db = db
        self.spool = spool
        self.min_free_mb = min_free_mb
        self.limits = limits
        self.on_stored = on_stored  # wakes the completion check of this process

    def ingest(self, tmp: Path, *, command_sop_class: str, command_sop_instance: str,
               transfer_syntax: str, calling_ae: str) -> StoreStatus:
        """Store one instance; the returned status is what the sender is told."""
        status = self._ingest(tmp, command_sop_class, command_sop_instance, transfer_syntax,
                              calling_ae)
        INSTANCES_RECEIVED.labels(status=status.name.lower()).inc()
        return status

    def _ingest(self, tmp: Path, command_sop_class: str, command_sop_instance: str,
                transfer_syntax: str, calling_ae: str) -> StoreStatus:
        try:
            header = read_header(tmp)
            if header.sop_instance_uid != command_sop_instance:
                raise RejectedInstance(StoreStatus.DATASET_DOES_NOT_MATCH,
                                       "SOPInstanceUID in the dataset differs from the command's")
            if header.sop_class_uid != command_sop_class:
                raise RejectedInstance(StoreStatus.DATASET_DOES_NOT_MATCH,
                                       "SOPClassUID in the dataset differs from the command's")
            size_problem = self.limits.problem(header)
            if size_problem:
                raise RejectedInstance(StoreStatus.IMAGE_SIZE_REFUSED, size_problem)
        except RejectedInstance as rejected:
            logger.warning("refused instance %s from %s: %s (status 0x%04X)",
                           command_sop_instance if is_valid_uid(command_sop_instance) else "?",
                           calling_ae, rejected.reason, rejected.status)
            return rejected.status
        return self._store(tmp, header, transfer_syntax, calling_ae)

    def _store(self, tmp: Path, header: InstanceHeader, transfer_syntax: str,
               calling_ae: str) -> StoreStatus:
        sop_uid = header.sop_instance_uid
        try:
            if self._already_stored(sop_uid):
                logger.info("instance %s received again from %s: already stored, acknowledged",
                            sop_uid, calling_ae)
                return StoreStatus.SUCCESS
        except sa.exc.SQLAlchemyError as exc:
            logger.error("instance %s refused: database unavailable (%s)", sop_uid,
                         type(exc).__name__)
            return StoreStatus.OUT_OF_RESOURCES

        free = self.spool.free_mb()
        if free < self.min_free_mb:
            logger.error("instance %s refused: %.0f MB free in the spool, below the floor of "
                         "min_free_mb = %d MB", sop_uid, free, self.min_free_mb)
            return StoreStatus.OUT_OF_RESOURCES

        final = self.spool.instance_path(header.study_uid, sop_uid)
        size = tmp.stat().st_size
        try:
            self.spool.commit(tmp, final)
        except OSError as exc:
            logger.error("instance %s refused: cannot write to the spool (%s)", sop_uid, exc)
            return StoreStatus.OUT_OF_RESOURCES

        try:
            self._index_once(header, final, size, transfer_syntax, calling_ae)
        except _PatientConflict:
            final.unlink(missing_ok=True)
            logger.warning("refused instance %s from %s: study %s already holds another "
                           "patient's images (status 0x%04X)", sop_uid, calling_ae,
                           header.study_uid, StoreStatus.PATIENT_CONFLICT)
            return StoreStatus.PATIENT_CONFLICT
        except _StoredConcurrently:
            logger.info("instance %s stored concurrently by another association", sop_uid)
            return StoreStatus.SUCCESS
        except sa.exc.SQLAlchemyError as exc:
            final.unlink(missing_ok=True)
            logger.error("instance %s refused: database unavailable (%s)", sop_uid,
                         type(exc).__name__)
            return StoreStatus.OUT_OF_RESOURCES
        logger.info("stored instance %s of study %s (%s %s) from %s, %d bytes", sop_uid,
                    header.study_uid, header.laterality or "-", header.view or "-", calling_ae,
                    size)
        if self.on_stored is not None:
            self.on_stored()
        return StoreStatus.SUCCESS

    def _already_stored(self, sop_uid: str) -> bool:
        with self.db.read_session() as session:
            found = session.scalar(
                sa.select(Instance.id).where(Instance.sop_instance_uid == sop_uid)
            )
        return found is not None

    def _index_once(self, header: InstanceHeader, final: Path, size: int,
                    transfer_syntax: str, calling_ae: str) -> None:
        """Index the instance; a unique-key race is either the same instance (stored once)
        or the same new study created by another association (then index again)."""
        for _ in range(3):
            try:
                self._index(header, final, size, transfer_syntax, calling_ae)
                return
            except sa.exc.IntegrityError:
                if self._already_stored(header.sop_instance_uid):
                    raise _StoredConcurrently() from None
        self._index(header, final, size, transfer_syntax, calling_ae)

    def _index(self, header: InstanceHeader, final: Path, size: int, transfer_syntax: str,
               calling_ae: str) -> None:
        now = utcnow()
        with self.db.session() as session:
            study = session.scalars(
                sa.select(Study).where(Study.study_uid == header.study_uid).with_for_update()
            ).first()
            if study is None:
                study = Study(study_uid=header.study_uid, patient_id=header.patient_id,
                              first_received_at=now, last_received_at=now)
                session.add(study)
                session.flush()
            else:
                if (study.patient_id or None) != header.patient_id:
                    raise _PatientConflict()
                study.last_received_at = now
            session.add(Instance(
                sop_instance_uid=header.sop_instance_uid,
                sop_class_uid=header.sop_class_uid,
                series_uid=header.series_uid,
                study_id=study.id,
                transfer_syntax=transfer_syntax,
                laterality=header.laterality,
                view=header.view,
                path=self.spool.relative(final),
                size_bytes=size,
                calling_ae=calling_ae[:16],
                received_at=now,
            ))
