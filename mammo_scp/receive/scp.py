"""The storage SCP.

Handlers are thin: the C-STORE handler passes pynetdicom's temporary file
(received straight to disk, never decoded) to the :class:`Ingestor` and
returns its status. pynetdicom itself turns an exception in a handler into
status 0xC211, so there is no catch-all here.

Who may connect: the called AE title must be the node's (``require_called_ae``);
when ``allowed_callers`` is set, only those calling AE titles (and, where an
entry names one, only from that host) are accepted; the rest are rejected as
"calling AE title not recognised". With ``tls_certificate`` the SCP speaks DICOM
TLS only, and with ``tls_client_ca`` it also requires a client certificate
signed by that CA.
"""

from __future__ import annotations

import logging
import ssl
import tempfile
from enum import IntEnum
from pathlib import Path
from typing import Any, cast

from pydicom.uid import UID
from pynetdicom import AE, _config, evt
from pynetdicom.dimse_primitives import C_STORE, N_EVENT_REPORT
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import ThreadedAssociationServer

from mammo_scp.config import Settings
from mammo_scp.db import Database
from mammo_scp.dicom import (
    ACCEPTED_TRANSFER_SYNTAXES,
    NO_DELAY,
    STORAGE_SOP_CLASSES,
    SopClass,
    make_ae,
)
from mammo_scp.metrics import ASSOCIATIONS
from mammo_scp.send.commitment import record_report
from mammo_scp.store.ingest import Ingestor

logger = logging.getLogger(__name__)


class Reject(IntEnum):
    """A-ASSOCIATE-RJ values used by the node (PS3.8 9.3.4)."""

    REJECTED_PERMANENT = 0x01
    SOURCE_SERVICE_USER = 0x01
    CALLING_AE_NOT_RECOGNISED = 0x03


def _handle_echo(event: evt.Event) -> int:
    return 0x0000


def _handle_store(event: evt.Event, ingestor: Ingestor) -> int:
    request = cast(C_STORE, event.request)
    return int(ingestor.ingest(
        Path(event.dataset_path),
        command_sop_class=str(request.AffectedSOPClassUID),
        command_sop_instance=str(request.AffectedSOPInstanceUID),
        transfer_syntax=str(event.context.transfer_syntax),
        calling_ae=event.assoc.requestor.ae_title.strip(),
    ))


def _handle_commitment_report(event: evt.Event, db: Database) -> tuple[int, None]:
    """A destination reports Storage Commitment for objects the node sent it."""
    request = cast(N_EVENT_REPORT, event.request)
    record_report(db, int(request.EventTypeID or 0), event.event_information)
    return 0x0000, None


def _check_caller(event: evt.Event, settings: Settings) -> None:
    """Reject callers outside ``allowed_callers`` (AE title, and host where given)."""
    if not settings.allowed_callers:
        return
    requestor = event.assoc.requestor
    if requestor.primitive is None:
        return
    calling = str(requestor.primitive.calling_ae_title).strip()
    entries = [c for c in settings.allowed_callers if c.ae_title == calling]
    if not entries:
        why = "calling AE title not in allowed_callers"
    elif not any(c.host in (None, requestor.address) for c in entries):
        why = f"calling AE title allowed only from {', '.join(str(c.host) for c in entries)}"
    else:
        return
    logger.warning("association from %s at %s rejected: %s", calling, requestor.address, why)
    ASSOCIATIONS.labels(outcome="rejected").inc()
    event.assoc.acse.send_reject(Reject.REJECTED_PERMANENT, Reject.SOURCE_SERVICE_USER,
                                 Reject.CALLING_AE_NOT_RECOGNISED)
    event.assoc.kill()  # waits until the rejection has gone out, as pynetdicom's own rejects do


class ContextResult(IntEnum):
    """Presentation context results the SCP gives (PS3.8 9.3.3.2)."""

    ACCEPTANCE = 0x00
    ABSTRACT_SYNTAX_NOT_SUPPORTED = 0x03
    TRANSFER_SYNTAXES_NOT_SUPPORTED = 0x04


#: At most this many SOP class names per reason in the refusal line (storescu proposes ~120).
_NAMES_SHOWN = 8


def _names(uids: list[str]) -> str:
    names = sorted({UID(uid).name for uid in uids})
    shown = ", ".join(names[:_NAMES_SHOWN])
    return shown + (f" and {len(names) - _NAMES_SHOWN} more" if len(names) > _NAMES_SHOWN
                    else "")


def refusal_summary(rejected: list[PresentationContext]) -> str:
    """The refused presentation contexts, by SOP class name and grouped by why."""
    by_reason: dict[str, list[str]] = {}
    for context in rejected:
        sop_class = str(context.abstract_syntax)
        if context.result == ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED:
            why = ("SOP class not accepted by the node (it takes Verification, Storage "
                   "Commitment and mammography storage only)")
        elif context.result == ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED:
            offered = ", ".join(sorted({UID(ts).name for ts in context.transfer_syntax}))
            why = f"none of the transfer syntaxes offered is accepted ({offered})"
        else:
            why = context.status.lower()
        by_reason.setdefault(why, []).append(sop_class)
    return "; ".join(f"{_names(uids)}: {why}" for why, uids in by_reason.items())


def _log_accepted(event: evt.Event) -> None:
    """One line per association; the refused presentation contexts (named, with the reason)
    in a second line, a warning when nothing was accepted, so a sender's "No presentation
    context" can be matched with the node's log."""
    ASSOCIATIONS.labels(outcome="accepted").inc()
    req = event.assoc.requestor
    logger.info("association accepted from %s at %s:%s", req.ae_title.strip(), req.address,
                req.port)
    rejected = event.assoc.rejected_contexts
    if not rejected:
        return
    accepted = len(event.assoc.accepted_contexts)
    proposed = accepted + len(rejected)
    log = logger.warning if accepted == 0 else logger.info
    log("association from %s: %d of %d proposed presentation context(s) refused%s: %s",
        req.ae_title.strip(), len(rejected), proposed,
        " (none accepted: nothing can be sent on it)" if accepted == 0 else "",
        refusal_summary(rejected))


def _log_rejected(event: evt.Event, settings: Settings) -> None:
    ASSOCIATIONS.labels(outcome="rejected").inc()
    req = event.assoc.requestor
    called = str(req.primitive.called_ae_title).strip() if req.primitive else "?"
    if settings.require_called_ae and called != settings.ae_title:
        why = f"called AE title {called!r} is not {settings.ae_title!r}"
    elif len(event.assoc.ae.active_associations) > settings.max_associations:
        why = f"more than max_associations = {settings.max_associations}"
    else:
        why = "see the line above"
    logger.warning("association from %s at %s:%s rejected: %s", req.ae_title.strip(),
                   req.address, req.port, why)


def _log_aborted(event: evt.Event) -> None:
    ASSOCIATIONS.labels(outcome="aborted").inc()
    refused = len(event.assoc.rejected_contexts)
    logger.warning("association aborted with %s%s", event.assoc.requestor.ae_title.strip(),
                   f" ({refused} presentation context(s) had been refused: see above)"
                   if refused and not event.assoc.accepted_contexts else "")


def build_ae(settings: Settings) -> AE:
    """An AE that accepts Verification and the mammography storage classes, nothing else."""
    ae = make_ae(settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu
    ae.maximum_associations = settings.max_associations
    ae.require_called_aet = settings.require_called_ae
    ae.acse_timeout = settings.acse_timeout_s
    ae.dimse_timeout = settings.dimse_timeout_s
    ae.network_timeout = settings.network_timeout_s
    ae.add_supported_context(SopClass.VERIFICATION.value)
    # The N-EVENT-REPORT of Storage Commitment arrives on the destination's own association,
    # which proposes the SCP role for itself.
    ae.add_supported_context(SopClass.STORAGE_COMMITMENT.value, scu_role=True, scp_role=True)
    for sop_class in STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class.value, list(ACCEPTED_TRANSFER_SYNTAXES))
    return ae


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server-side TLS context, or None when TLS is not configured."""
    if settings.tls_certificate is None or settings.tls_private_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_certificate, settings.tls_private_key)
    if settings.tls_client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(settings.tls_client_ca)
    return context


def start_scp(settings: Settings, ingestor: Ingestor) -> ThreadedAssociationServer:
    """Start listening in the background; received datasets go straight to the spool."""
    # Write incoming datasets to files in the spool's own file system, so that the
    # commit is a rename, not a copy.
    _config.STORE_RECV_CHUNKED_DATASET = True
    tempfile.tempdir = str(ingestor.spool.incoming)
    ae = build_ae(settings)
    handlers: list[Any] = [
        NO_DELAY,
        (evt.EVT_C_ECHO, _handle_echo),
        (evt.EVT_C_STORE, _handle_store, [ingestor]),
        (evt.EVT_N_EVENT_REPORT, _handle_commitment_report, [ingestor.db]),
        (evt.EVT_REQUESTED, _check_caller, [settings]),
        (evt.EVT_ACCEPTED, _log_accepted),
        (evt.EVT_REJECTED, _log_rejected, [settings]),
        (evt.EVT_ABORTED, _log_aborted),
    ]
    context = tls_context(settings)
    server = ae.start_server((settings.bind_address, settings.port), block=False,
                             evt_handlers=handlers, ssl_context=context)
    logger.info("listening as %s on %s:%d%s (%d storage SOP classes, %d transfer syntaxes)",
                settings.ae_title, settings.bind_address, settings.port,
                " with TLS" if context else "", len(STORAGE_SOP_CLASSES),
                len(ACCEPTED_TRANSFER_SYNTAXES))
    assert isinstance(server, ThreadedAssociationServer)
    return server
