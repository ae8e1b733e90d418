"""Orthanc (Debian package) as the site PACS in tests, on loopback ports, with DICOMweb."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.peers import echo_ok, free_port, wait_for, write_config

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
PLUGINS = Path("/usr/share/orthanc/plugins")


class Orthanc:
    """An Orthanc server with its own storage, started and stopped by the test."""

    def __init__(self, directory: Path, aet: str = "ORTHANC",
                 modalities: dict[str, tuple[str, str, int]] | None = None) -> None:
        self.directory = directory
        self.aet = aet
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.modalities = modalities or {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self) -> Orthanc:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "mammo-scp test PACS",
            "StorageDirectory": str(self.directory / "storage"),
            "IndexDirectory": str(self.directory / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": {k: list(v) for k, v in self.modalities.items()},
            "Plugins": [str(PLUGINS / "libOrthancDicomWeb.so")],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        path = self.directory / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        self._log = open(self.directory / "orthanc.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([ORTHANC, str(path)], stdout=self._log,
                                     stderr=subprocess.STDOUT)
        wait_for(self._ready, 60, what="Orthanc to start")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"Orthanc exited: {self.log()}")
        try:
            self.get("/system")
        except OSError:
            return False
        return echo_ok(self.dicom_port, self.aet, 1.0)

    def get(self, route: str) -> Any:
        with urllib.request.urlopen(self.url + route, timeout=10) as response:
            return json.loads(response.read())

    def post(self, route: str, body: Any) -> Any:
        request = urllib.request.Request(self.url + route, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def file(self, instance_id: str) -> bytes:
        with urllib.request.urlopen(f"{self.url}/instances/{instance_id}/file",
                                    timeout=30) as response:
            return bytes(response.read())

    def log(self) -> str:
        path = self.directory / "orthanc.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        if self.proc:
            self._log.close()


def node_config(pacs: Orthanc, tmp_path: Path, node_port: int, **extra: Any) -> Path:
    """Write the config of a node on loopback ``node_port`` (data under ``tmp_path``) that
    sends its results to ``pacs``; the four views, not the quiet period, complete a study."""
    return write_config(tmp_path / "node.toml", {
        "port": node_port, "bind_address": "127.0.0.1", "data_dir": str(tmp_path / "data"),
        "quiet_period_s": 60.0, "poll_interval_s": 0.2, "min_free_mb": 1,
        "destinations": [{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1",
                          "port": pacs.dicom_port}],
    } | extra)
