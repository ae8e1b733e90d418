"""The spool: files on disk, written so that a rename is the commit point.

Layout under the spool root::

    incoming/<host>/                   partial transfers (pynetdicom writes here)
    instances/<study uid>/<sop uid>.dcm
    results/<job id>/<sop uid>.dcm

A file is written to a temporary name in the same file system, fsynced,
renamed into place, and the directory fsynced; after a crash a file under
``instances/`` or ``results/`` is complete, and anything under ``incoming/``
was never acknowledged and is removed when the SCP on that host starts (a
`work` process sharing the spool never touches it).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path

from mammo_scp.dicom import is_valid_uid

logger = logging.getLogger(__name__)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Paths and durable writes under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.incoming = self.root / "incoming" / socket.gethostname()
        self.instances = self.root / "instances"
        self.results = self.root / "results"

    def prepare(self, *, receiving: bool = True) -> None:
        """Create the layout (owner-only permissions); a receiving process (the SCP) also
        drops the partial transfers its host left when it last stopped."""
        for path in (self.root, self.incoming, self.instances, self.results):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not receiving:
            return
        stale = list(self.incoming.iterdir())
        for path in stale:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if stale:
            logger.warning("removed %d partial transfer(s) left in %s", len(stale), self.incoming)

    def instance_path(self, study_uid: str, sop_uid: str) -> Path:
        """Where an instance lives; refuses anything but valid UIDs as names."""
        for name, value in (("StudyInstanceUID", study_uid), ("SOPInstanceUID", sop_uid)):
            if not is_valid_uid(value):
                raise ValueError(f"{name} {value!r} is not a valid UID")
        return self.instances / study_uid / f"{sop_uid}.dcm"

    def result_path(self, job_id: int, sop_uid: str) -> Path:
        if not is_valid_uid(sop_uid):
            raise ValueError(f"SOPInstanceUID {sop_uid!r} is not a valid UID")
        return self.results / str(int(job_id)) / f"{sop_uid}.dcm"

    def relative(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    def absolute(self, relative: str) -> Path:
        path = (self.root / relative).resolve()
        if self.root not in path.parents:
            raise ValueError(f"path {relative!r} escapes the spool")
        return path

    def commit(self, tmp: Path, final: Path) -> None:
        """Make ``tmp`` durable and atomically give it its final name."""
        fsync_file(tmp)
        final.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.replace(tmp, final)
        fsync_dir(final.parent)

    def write_bytes(self, final: Path, data: bytes) -> None:
        """Write ``data`` to ``final`` durably (temporary file beside it, fsync, rename).

        The temporary file is not under ``incoming/``, which a starting SCP empties.
        """
        final.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=final.parent, prefix=".", suffix=".part")
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            self.commit(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def free_mb(self) -> float:
        usage = shutil.disk_usage(self.root)
        return usage.free / (1024 * 1024)
