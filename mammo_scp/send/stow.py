"""DICOMweb STOW-RS: send files to one DICOMweb server in one request per study."""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset

from mammo_scp.config import DicomWebDestination
from mammo_scp.send.cstore import SendOutcome

logger = logging.getLogger(__name__)


def stow_files(destination: DicomWebDestination, paths: list[Path],
               timeout_s: float) -> list[SendOutcome]:
    """POST ``paths`` to ``{url}/studies``; one outcome per path, in order."""
    session = requests.Session()
    if destination.username is not None:
        session.auth = (destination.username, destination.password or "")
    client = DICOMwebClient(url=destination.url, session=session, timeout=timeout_s)
    datasets = [dcmread(path) for path in paths]
    by_study: dict[str, list[int]] = defaultdict(list)
    for index, ds in enumerate(datasets):
        by_study[str(ds.StudyInstanceUID)].append(index)
    errors: dict[int, str | None] = {}
    for study_uid, indices in by_study.items():
        try:
            response = client.store_instances([datasets[i] for i in indices],
                                              study_instance_uid=study_uid)
        except (requests.RequestException, ValueError) as exc:
            for i in indices:
                errors[i] = f"STOW-RS to {destination.url} failed: {_short(exc)}"
            continue
        failed = _failed_uids(response)
        for i in indices:
            uid = str(datasets[i].SOPInstanceUID)
            errors[i] = (f"STOW-RS refused the object (failure reason {failed[uid]})"
                         if uid in failed else None)
    return [SendOutcome(path, errors[i]) for i, path in enumerate(paths)]


def _failed_uids(response: Dataset | None) -> dict[str, int]:
    if response is None:
        return {}
    return {str(item.ReferencedSOPInstanceUID): int(item.get("FailureReason", 0))
            for item in response.get("FailedSOPSequence", [])}


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
