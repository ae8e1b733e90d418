"""The OHIF viewer (npm @ohif/app, its built dist/) served locally, reading from Orthanc.

One small HTTP server serves OHIF's static files (any other path falls back to index.html,
as OHIF's router expects) and proxies ``/dicom-web/...`` to Orthanc's DICOMweb plugin, so
the viewer and its data come from one origin. ``/app-config.js`` is replaced by a config
whose single data source is that proxy.
"""

from __future__ import annotations

import mimetypes
import os
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
#: Where tests/run.sh unpacks `npm pack @ohif/app`; MAMMO_OHIF_DIST overrides it.
OHIF_DIST = Path(os.environ.get("MAMMO_OHIF_DIST", REPO / ".cache" / "ohif" / "package" / "dist"))
CHROMIUM = shutil.which("chromium")

APP_CONFIG = """window.config = {
  routerBasename: null,
  extensions: [],
  modes: [],
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  defaultDataSourceName: 'orthanc',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'orthanc',
    configuration: {
      friendlyName: 'Orthanc (test PACS)',
      name: 'orthanc',
      wadoUriRoot: '/dicom-web',
      qidoRoot: '/dicom-web',
      wadoRoot: '/dicom-web',
      qidoSupportsIncludeField: true,
      imageRendering: 'wadors',
      thumbnailRendering: 'wadors',
      enableStudyLazyLoad: true,
      supportsFuzzyMatching: false,
      supportsWildcard: true,
      staticWado: false,
      singlepart: 'bulkdata,video',
      bulkDataURI: { enabled: true, relativeResolution: 'studies' },
      omitQuotationForMultipartRequest: true,
    },
  }],
};
"""


def available() -> bool:
    return (OHIF_DIST / "index.html").is_file() and CHROMIUM is not None


class OhifServer:
    """OHIF + a DICOMweb proxy to ``orthanc_url`` on 127.0.0.1:port."""

    def __init__(self, orthanc_url: str, port: int) -> None:
        self.orthanc_url = orthanc_url.rstrip("/")
        self.port = port
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.server.daemon_threads = True

    def start(self) -> OhifServer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        orthanc = self.orthanc_url

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path.startswith("/dicom-web"):
                    self._proxy()
                elif self.path.split("?")[0] == "/app-config.js":
                    self._send(200, "application/javascript", APP_CONFIG.encode())
                else:
                    self._static()

            def _proxy(self) -> None:
                request = urllib.request.Request(orthanc + self.path, headers={
                    "Accept": self.headers.get("Accept", "*/*")})
                try:
                    with urllib.request.urlopen(request, timeout=60) as response:
                        body = response.read()
                        self._send(response.status, response.headers.get(
                            "Content-Type", "application/octet-stream"), body)
                except urllib.error.HTTPError as exc:
                    self._send(exc.code, "text/plain", exc.read())

            def _static(self) -> None:
                relative = self.path.split("?")[0].lstrip("/") or "index.html"
                path = (OHIF_DIST / relative).resolve()
                if OHIF_DIST.resolve() not in path.parents or not path.is_file():
                    path = OHIF_DIST / "index.html"
                kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                if path.suffix == ".wasm":
                    kind = "application/wasm"
                self._send(200, kind, path.read_bytes())

            def _send(self, status: int, kind: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        return Handler


#: Chromium flags for the viewer test: headless, no sandbox (containers), software GL,
#: nothing fetched from outside the machine, and a fresh profile per launch.
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic",
                 "--enable-unsafe-swiftshader", "--use-angle=swiftshader")


def playwright_available() -> bool:
    """True when the PyPI ``playwright`` package (its driver, not its browsers) is installed."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


def chromium_version() -> str:
    """The Debian chromium's version line, for the test log and the docs."""
    assert CHROMIUM, "Debian chromium is not installed"
    done = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, timeout=60)
    return done.stdout.strip()
