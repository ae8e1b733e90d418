"""Storage Commitment (Push Model, PS3.4 Annex J) for C-STORE destinations that ask for it.

After the objects of a batch are stored, the node sends an N-ACTION on the same
association listing them under a new Transaction UID, and marks those deliveries
``requested``. The destination later reports on an association of its own, an
N-EVENT-REPORT to the node's SCP with that Transaction UID; :func:`record_report`
marks each object ``committed`` or ``failed`` with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from mammo_scp.db import Database
from mammo_scp.dicom import SopClass
from mammo_scp.jobs.models import Delivery, Result, utcnow
from mammo_scp.jobs.states import CommitmentState

logger = logging.getLogger(__name__)

#: The well-known SOP Instance of the Storage Commitment Push Model (PS3.4 J.3.2).
PUSH_MODEL_INSTANCE = "1.2.840.10008.1.20.1.1"
REQUEST_COMMITMENT = 1  # N-ACTION Action Type ID
EVENT_ALL_COMMITTED = 1  # N-EVENT-REPORT Event Type IDs
EVENT_SOME_FAILED = 2


def new_transaction_uid() -> str:
    return str(generate_uid())


def reserve_transaction(db: Database, delivery_ids: Sequence[int], transaction_uid: str) -> None:
    """Write the Transaction UID to the deliveries *before* the N-ACTION goes out: the
    destination may report on its own association before the sender records anything."""
    with db.session() as session:
        session.execute(sa.update(Delivery).where(Delivery.id.in_(list(delivery_ids)))
                        .values(commitment_uid=transaction_uid, commitment=None,
                                commitment_at=None, commitment_error=None))


def request_commitment(assoc: Any, stored: Sequence[Dataset], transaction_uid: str) -> bool:
    """Ask for commitment of ``stored`` on an open association under ``transaction_uid``;
    False when the destination refused the request (the reason is logged)."""
    request = Dataset()
    request.TransactionUID = transaction_uid
    items = []
    for ds in stored:
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        items.append(item)
    request.ReferencedSOPSequence = DicomSequence(items)
    try:
        status, _ = assoc.send_n_action(request, REQUEST_COMMITMENT,
                                        SopClass.STORAGE_COMMITMENT.value, PUSH_MODEL_INSTANCE)
    except ValueError as exc:  # Storage Commitment not accepted on this association
        logger.warning("storage commitment not offered by the destination: %s", exc)
        return False
    if not status or int(status.get("Status", 0xFFFF)) != 0x0000:
        code = f"0x{int(status.Status):04X}" if status and "Status" in status else "none"
        logger.warning("storage commitment request refused (status %s)", code)
        return False
    return True


def record_report(db: Database, event_type: int, info: Dataset) -> int:
    """Record an N-EVENT-REPORT; returns how many deliveries it settled."""
    transaction_uid = str(info.get("TransactionUID", ""))
    committed = {str(i.ReferencedSOPInstanceUID) for i in info.get("ReferencedSOPSequence", [])}
    failed = {str(i.ReferencedSOPInstanceUID): int(i.get("FailureReason", 0))
              for i in info.get("FailedSOPSequence", [])}
    settled = 0
    with db.session() as session:
        rows = session.execute(
            sa.select(Delivery, Result.sop_instance_uid).join(Result)
            .where(Delivery.commitment_uid == transaction_uid)
        ).all()
        for delivery, sop_uid in rows:
            if sop_uid in committed:
                delivery.commitment = CommitmentState.COMMITTED
            elif sop_uid in failed:
                delivery.commitment = CommitmentState.FAILED
                delivery.commitment_error = f"failure reason 0x{failed[sop_uid]:04X}"
            else:
                continue
            delivery.commitment_at = utcnow()
            settled += 1
    level = logging.INFO if event_type == EVENT_ALL_COMMITTED and not failed else logging.WARNING
    logger.log(level, "storage commitment %s: %d committed, %d failed, %d delivery(ies) "
               "settled", transaction_uid, len(committed), len(failed), settled)
    return settled
