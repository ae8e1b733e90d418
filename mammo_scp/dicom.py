"""DICOM facts the node relies on, named once: SOP classes, transfer syntaxes, statuses, UIDs."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from enum import IntEnum, StrEnum
from typing import Any

from pydicom import uid as pduid
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.transport import AssociationSocket

from mammo_scp import __version__
from mammo_scp.reactors import wake_on_work

#: Identifies this implementation in association negotiation (PS3.7 D.3.3.2): a UUID-derived
#: UID fixed for the project, and a version name that changes with each release.
# 2.25 + the first 128 bits of sha256("mammo-scp implementation")
IMPLEMENTATION_CLASS_UID = "2.25.32288880922260250582317703663212367383"
IMPLEMENTATION_VERSION_NAME = f"MAMMO_SCP_{__version__}"[:16]


def make_ae(ae_title: str) -> AE:
    """A pynetdicom AE that names the node as its implementation.

    Its associations' threads sleep until they have work instead of polling
    (:func:`mammo_scp.reactors.wake_on_work`).
    """
    wake_on_work()
    _ack_at_once()
    ae = AE(ae_title=ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    return ae


def _send_pdus_at_once(event: evt.Event) -> None:
    """Turn off Nagle's algorithm on an association's TCP connection.

    pynetdicom leaves it on; a DIMSE message is then often held back until the peer
    acknowledges the previous small segment, which peers delay by up to 40 ms: each
    C-STORE to dcmtk's storescp took ~90 ms instead of ~45, and each answer to a sender
    waited the same way.
    """
    sock: Any = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


#: Bind to every association the node makes or accepts (``evt_handlers``).
NO_DELAY = (evt.EVT_CONN_OPEN, _send_pdus_at_once)

_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only
_QUICKACK_LOCK = threading.Lock()


def _ack_at_once() -> None:
    """Acknowledge what peers send at once, not up to 40 ms later (Linux ``TCP_QUICKACK``).

    A peer that leaves Nagle's algorithm on, as dcmtk does since 3.6.2 (storescp,
    storescu and the PACS built on it, unless run with ``NO_TCPDELAY=1``), writes a
    PDU's header and its body separately and holds the body back until the header is
    acknowledged, which Linux delays: each C-STORE to storescp waited ~40 ms for its
    response (a study's three results took ~150 ms to deliver instead of ~25), and each
    storescu waited as long between a command and its dataset. Linux leaves quick-ack
    mode by itself, so it is set again before every read of an association's socket.
    Installed once, for every association of the process; a no-op where the option does
    not exist.
    """
    with _QUICKACK_LOCK:
        if _QUICKACK is None or getattr(AssociationSocket.recv, "_mammo_quick_ack", False):
            return
        read = AssociationSocket.recv

        def recv(self: AssociationSocket, nr_bytes: int) -> bytearray:
            sock = self.socket
            if sock is not None:
                with contextlib.suppress(OSError):  # closed, or not TCP
                    sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            return read(self, nr_bytes)

        recv._mammo_quick_ack = True  # type: ignore[attr-defined]
        AssociationSocket.recv = recv  # type: ignore[method-assign]


class SopClass(StrEnum):
    VERIFICATION = "1.2.840.10008.1.1"
    STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
    MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
    MG_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"
    BREAST_TOMOSYNTHESIS = "1.2.840.10008.5.1.4.1.1.13.1.3"
    SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
    COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
    MAMMOGRAPHY_CAD_SR = "1.2.840.10008.5.1.4.1.1.88.50"


#: The storage SOP classes accepted as SCP; every other is refused at negotiation.
STORAGE_SOP_CLASSES: tuple[SopClass, ...] = (
    SopClass.MG_FOR_PRESENTATION,
    SopClass.MG_FOR_PROCESSING,
    SopClass.BREAST_TOMOSYNTHESIS,
)

#: Transfer syntaxes accepted for storage, uncompressed first (preferred when offered).
ACCEPTED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    pduid.ExplicitVRLittleEndian,
    pduid.ImplicitVRLittleEndian,
    pduid.DeflatedExplicitVRLittleEndian,
    pduid.JPEGBaseline8Bit,
    pduid.JPEGExtended12Bit,
    pduid.JPEGLossless,
    pduid.JPEGLosslessSV1,
    pduid.JPEGLSLossless,
    pduid.JPEGLSNearLossless,
    pduid.JPEG2000Lossless,
    pduid.JPEG2000,
    pduid.RLELossless,
)


class StoreStatus(IntEnum):
    """C-STORE response statuses the node returns (PS3.4 B.2.3), listed in the README."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700          # disk or database unavailable, or below the free-space floor
    DATASET_DOES_NOT_MATCH = 0xA900    # dataset UIDs differ from the C-STORE command's
    CANNOT_UNDERSTAND = 0xC000         # the dataset could not be parsed
    INVALID_UID = 0xC001               # a UID is missing, malformed or hostile (e.g. '../x')
    IMAGE_SIZE_REFUSED = 0xC002        # Rows x Columns outside min_image_side / max_image_pixels
    PATIENT_CONFLICT = 0xC003          # the study already holds another patient's images


# PS3.5 9.1: components of digits separated by '.', no leading zero in a multi-digit
# component, at most 64 characters.
_UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


def is_valid_uid(value: object) -> bool:
    """True for a syntactically valid DICOM UID, the only thing the node lets name a file."""
    return isinstance(value, str) and len(value) <= 64 and bool(_UID_PATTERN.match(value))


class Laterality(StrEnum):
    RIGHT = "R"
    LEFT = "L"


class View(StrEnum):
    CC = "CC"
    MLO = "MLO"
    ML = "ML"
    LM = "LM"


#: ViewCodeSequence codes (CID 4014; SNOMED CT and the retired SNOMED-RT equivalents).
VIEW_CODES: dict[str, View] = {
    "399162004": View.CC,
    "R-10242": View.CC,
    "399368009": View.MLO,
    "R-10226": View.MLO,
    "399260004": View.ML,
    "R-10224": View.ML,
    "399352003": View.LM,
    "R-10228": View.LM,
}


def view_of(ds: Dataset) -> str | None:
    """A dataset's view: its View Code Sequence's code (CID 4014) if known, else its View
    Position (upper case); None without either."""
    for item in ds.get("ViewCodeSequence", []) or []:
        view = VIEW_CODES.get(str(item.get("CodeValue", "")))
        if view is not None:
            return view.value
    position = str(ds.get("ViewPosition", "") or "").strip().upper()
    return position or None


#: The four standard screening views that complete a study.
FOUR_VIEWS: frozenset[tuple[Laterality, View]] = frozenset(
    (lat, view) for lat in Laterality for view in (View.CC, View.MLO)
)
