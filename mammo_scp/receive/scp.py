"""The storage SCP.

Handlers are thin: the C-STORE handler passes pynetdicom's temporary file
(received straight to disk, never decoded) to the :class:`Ingestor` and
returns its status. pynetdicom itself turns an exception in a handler into
status 0xC211, so there is no catch-all here.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, cast

from pynetdicom import AE, _config, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.transport import ThreadedAssociationServer

from mammo_scp.config import Settings
from mammo_scp.dicom import ACCEPTED_TRANSFER_SYNTAXES, STORAGE_SOP_CLASSES, SopClass
from mammo_scp.store.ingest import Ingestor

logger = logging.getLogger(__name__)


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


def _log_accepted(event: evt.Event) -> None:
    req = event.assoc.requestor
    logger.info("association accepted from %s at %s:%s", req.ae_title.strip(), req.address,
                req.port)


def _log_rejected(event: evt.Event) -> None:
    req = event.assoc.requestor
    logger.warning("association rejected from %s at %s:%s", req.ae_title.strip(), req.address,
                   req.port)


def _log_aborted(event: evt.Event) -> None:
    logger.warning("association aborted by %s", event.assoc.requestor.ae_title.strip())


def build_ae(settings: Settings) -> AE:
    """An AE that accepts Verification and the mammography storage classes, nothing else."""
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu
    ae.maximum_associations = settings.max_associations
    ae.require_called_aet = True
    ae.add_supported_context(SopClass.VERIFICATION.value)
    for sop_class in STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class.value, list(ACCEPTED_TRANSFER_SYNTAXES))
    return ae


def start_scp(settings: Settings, ingestor: Ingestor) -> ThreadedAssociationServer:
    """Start listening in the background; received datasets go straight to the spool."""
    # Write incoming datasets to files in the spool's own file system, so that the
    # commit is a rename, not a copy.
    _config.STORE_RECV_CHUNKED_DATASET = True
    tempfile.tempdir = str(ingestor.spool.incoming)
    ae = build_ae(settings)
    handlers: list[Any] = [
        (evt.EVT_C_ECHO, _handle_echo),
        (evt.EVT_C_STORE, _handle_store, [ingestor]),
        (evt.EVT_ACCEPTED, _log_accepted),
        (evt.EVT_REJECTED, _log_rejected),
        (evt.EVT_ABORTED, _log_aborted),
    ]
    server = ae.start_server((settings.bind_address, settings.port), block=False,
                             evt_handlers=handlers)
    logger.info("listening as %s on %s:%d (%d storage SOP classes, %d transfer syntaxes)",
                settings.ae_title, settings.bind_address, settings.port,
                len(STORAGE_SOP_CLASSES), len(ACCEPTED_TRANSFER_SYNTAXES))
    assert isinstance(server, ThreadedAssociationServer)
    return server
