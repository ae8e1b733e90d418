"""Real peers for integration tests: the node as a process, dcmtk's storescu and storescp."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pynetdicom import AE

VERIFICATION = "1.2.840.10008.1.1"
# dcmtk's binaries by path: pynetdicom installs Python apps with the same names.
DCMTK_BIN = Path("/usr/bin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _QuietProbe(logging.Filter):
    """Drops the two errors pynetdicom logs when a probe finds the port closed
    ("Association request failed: unable to connect", "TCP Initialisation Error:
    Connection refused"), while :func:`echo_ok` probes: a port that is not open yet is
    expected when polling, and hundreds of these lines buried the failures of the tests
    that poll. (The association runs in a thread of its own, so the filter goes by the
    message, for the probe's duration.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(
            ("Association request failed: unable to connect", "TCP Initialisation Error"))


def echo_ok(port: int, aet: str, timeout: float = 2.0) -> bool:
    """True when a C-ECHO to 127.0.0.1:port succeeds; a closed port logs nothing."""
    ae = AE(ae_title="TESTSCU")
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    ae.add_requested_context(VERIFICATION)
    transport_log = logging.getLogger("pynetdicom.transport")
    quiet = _QuietProbe()
    transport_log.addFilter(quiet)
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title=aet)
    finally:
        transport_log.removeFilter(quiet)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.2,
             what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def write_config(path: Path, values: dict[str, Any]) -> Path:
    """Write a TOML config (flat keys plus a list of destination tables)."""
    lines = []
    values = {"http_bind_address": "127.0.0.1", "http_port": free_port()} | values
    destinations = values.pop("destinations", [])
    for key, value in values.items():
        if isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        else:
            lines.append(f"{key} = {value!r}".replace("True", "true").replace("False", "false"))
    for dest in destinations:
        lines.append("[[destinations]]")
        for key, value in dest.items():
            lines.append(f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value}")
    path.write_text("\n".join(lines) + "\n")
    return path


class NodeProcess:
    """`mammo-scp serve` or `work` as a child process, with its log in a file."""

    def __init__(self, command: str, config: Path, log: Path, env: dict[str, str] | None = None):
        self.command = command
        self.config = config
        self.log = log
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> NodeProcess:
        self._log_fh = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mammo_scp", self.command, "--config", str(self.config)],
            stdout=self._log_fh, stderr=subprocess.STDOUT, env=self.env,
        )
        return self

    def wait_listening(self, port: int, aet: str, timeout: float = 60.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited with {self.proc.returncode}:\n{self.output()}")
            return echo_ok(port, aet, timeout=1.0)
        wait_for(ready, timeout, what="the node to answer C-ECHO")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log_fh.close()
        return int(self.proc.returncode)


def storescu(port: int, aet: str, files: list[Path], *extra: str,
             timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Send files with dcmtk's storescu (-aet STORESCU), returning the finished process."""
    binary = DCMTK_BIN / "storescu"
    assert binary.exists(), "dcmtk storescu is not installed (apt-get install dcmtk)"
    return subprocess.run(
        [str(binary), "-v", "-aet", "STORESCU", "-aec", aet, *extra, "127.0.0.1", str(port),
         *[str(f) for f in files]],
        capture_output=True, text=True, timeout=timeout,
    )


class StoreSCP:
    """dcmtk's storescp receiving into a directory."""

    def __init__(self, directory: Path, port: int, aet: str = "PACS", *extra: str) -> None:
        self.directory = directory
        self.port = port
        self.aet = aet
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> StoreSCP:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [str(DCMTK_BIN / "storescp"), "-aet", self.aet, "-od", str(self.directory),
             *self.extra, str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: echo_ok(self.port, self.aet, 1.0), 20, what="storescp to listen")
        return self

    def files(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if p.is_file())

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def send_file_as_is(assoc: Any, path: Path) -> Any:
    """C-STORE the dataset bytes of a DICOM file unparsed (pynetdicom's chunked send), so a
    payload pydicom cannot read (corrupt deflate data, say) reaches the peer as it is."""
    from pynetdicom import _config

    saved = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        return assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = saved
