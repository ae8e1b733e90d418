"""C-STORE SCU: send files to one DICOM destination over one association."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from mammo_scp.config import DicomDestination
from mammo_scp.dicom import NO_DELAY, SopClass, make_ae
from mammo_scp.send.commitment import request_commitment

logger = logging.getLogger(__name__)

#: C-STORE statuses that mean the destination has the object (PS3.4 B.2.3).
_STORED = {0x0000, 0xB000, 0xB006, 0xB007}


@dataclass(frozen=True)
class SendOutcome:
    """None ``error`` means the destination acknowledged the object.

    ``permanent`` marks an error that no retry can mend (the delivery dies at once).
    """

    path: Path
    error: str | None
    permanent: bool = False
    commitment_uid: str | None = None


def send_files(destination: DicomDestination, calling_ae: str, paths: list[Path],
               timeout_s: float, commitment_uid: str | None = None) -> list[SendOutcome]:
    """Send ``paths`` in one association; one outcome per path, in order. With
    ``commitment_uid``, ask for Storage Commitment of what was stored under that UID."""
    datasets = [dcmread(path) for path in paths]
    ae = make_ae(calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    # Each object's own transfer syntax first, then the uncompressed ones every SCP must
    # accept (pynetdicom re-encodes an uncompressed object for the accepted syntax).
    proposals: dict[str, list[str]] = {}
    for ds in datasets:
        syntaxes = proposals.setdefault(str(ds.SOPClassUID), [])
        for syntax in (str(ds.file_meta.TransferSyntaxUID), ExplicitVRLittleEndian,
                       ImplicitVRLittleEndian):
            if syntax not in syntaxes:
                syntaxes.append(syntax)
    for sop_class, syntaxes in list(proposals.items())[:127]:
        ae.add_requested_context(sop_class, syntaxes)
    if commitment_uid is not None:
        ae.add_requested_context(SopClass.STORAGE_COMMITMENT.value)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title,
                         evt_handlers=[NO_DELAY])
    if not assoc.is_established:
        why = ("association rejected" if assoc.is_rejected else
               "association aborted" if assoc.is_aborted else "no association")
        error = f"{why} by {destination.ae_title}@{destination.host}:{destination.port}"
        return [SendOutcome(path, error) for path in paths]
    outcomes = []
    try:
        for path, ds in zip(paths, datasets, strict=True):
            outcomes.append(SendOutcome(path, _store_one(assoc, ds)))
        stored = [ds for ds, o in zip(datasets, outcomes, strict=True) if o.error is None]
        if commitment_uid is not None and stored and assoc.is_established and \
                request_commitment(assoc, stored, commitment_uid):
            outcomes = [replace(o, commitment_uid=commitment_uid if o.error is None else None)
                        for o in outcomes]
    finally:
        if assoc.is_established:
            assoc.release()
    return outcomes


def _store_one(assoc: object, ds: object) -> str | None:
    try:
        status = assoc.send_c_store(ds)  # type: ignore[attr-defined]
    except ValueError as exc:  # no accepted presentation context for this object
        return f"not accepted by the destination: {exc}"
    if not status or "Status" not in status:
        return "no response to C-STORE (timeout or aborted association)"
    code = int(status.Status)
    if code in _STORED:
        return None
    return f"C-STORE failed with status 0x{code:04X}"
