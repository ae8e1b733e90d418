"""Who may connect: called AE, calling-AE allowlist with host check, DICOM TLS; and files
readable only by the node's user. Peers are dcmtk's echoscu/storescu (TLS-enabled build)."""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mammo_scp.config import Settings
from mammo_scp.db import Database, upgrade
from mammo_scp.receive.scp import start_scp
from mammo_scp.store.ingest import Ingestor
from mammo_scp.store.spool import Spool
from tests.support.mg import four_view_study, make_mg
from tests.support.peers import DCMTK_BIN, free_port, storescu, wait_for

AET = "MAMMO_SCP"


def echoscu(port: int, *args: str, calling: str = "ECHOSCU",
            called: str = AET) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(DCMTK_BIN / "echoscu"), "-v", "-aet", calling, "-aec", called,
                           *args, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[object]:
    servers = []
    saved = tempfile.tempdir

    def start(**settings_values: object) -> Settings:
        settings = Settings.model_validate({"port": free_port(), "bind_address": "127.0.0.1",
                                            "min_free_mb": 1} | settings_values)
        db = Database(f"sqlite:///{tmp_path / 'node.db'}")
        upgrade(db)
        spool = Spool(tmp_path / "spool")
        spool.prepare()
        servers.append(start_scp(settings, Ingestor(db, spool, 1)))
        return settings

    yield start
    for server in servers:
        server.shutdown()
    tempfile.tempdir = saved


def test_called_ae_title_must_be_ours(scp, caplog: pytest.LogCaptureFixture) -> None:
    settings = scp()
    refused = echoscu(settings.port, called="SOMEONE")
    assert "Called AE Title Not Recognized" in refused.stderr, refused.stderr
    # pynetdicom sends this rejection, then fires EVT_REJECTED, whose handler logs the
    # reason: echoscu can return before the line is written.
    line = "called AE title 'SOMEONE' is not 'MAMMO_SCP'"
    wait_for(lambda: line in caplog.text, 5.0, interval=0.05, what=f"the log line {line!r}")
    assert echoscu(settings.port).returncode == 0


def test_allowlist_with_host_check(scp, caplog: pytest.LogCaptureFixture) -> None:
    settings = scp(allowed_callers=[{"ae_title": "PACS", "host": "127.0.0.1"},
                                    {"ae_title": "REMOTE", "host": "192.0.2.7"}])
    assert echoscu(settings.port, calling="PACS").returncode == 0
    stranger = echoscu(settings.port, calling="STRANGER")
    assert "Calling AE Title Not Recognized" in stranger.stderr, stranger.stderr
    wrong_host = echoscu(settings.port, calling="REMOTE")
    assert "Calling AE Title Not Recognized" in wrong_host.stderr
    assert "STRANGER at 127.0.0.1 rejected: calling AE title not in allowed_callers" in caplog.text
    assert "REMOTE at 127.0.0.1 rejected: calling AE title allowed only from 192.0.2.7" in \
        caplog.text


def _certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate and a client certificate signed by it (openssl)."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=test CA")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
            f"{name}.csr", "-subj", f"/CN={'127.0.0.1' if name == 'server' else 'modality'}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2")
    return {n: directory / n for n in ("ca.crt", "server.key", "server.crt", "client.key",
                                       "client.crt")}


def test_tls_with_client_certificates(scp, tmp_path: Path) -> None:
    certs = _certificates(tmp_path)
    settings = scp(tls_certificate=certs["server.crt"], tls_private_key=certs["server.key"],
                   tls_client_ca=certs["ca.crt"])
    _, files = four_view_study(tmp_path / "study")
    tls = ["+tls", str(certs["client.key"]), str(certs["client.crt"]), "+cf",
           str(certs["ca.crt"])]
    sent = storescu(settings.port, AET, files, *tls)
    assert sent.stderr.count("Received Store Response (Success)") == 4, sent.stderr
    # Plain TCP to a TLS port fails, and so does TLS without a client certificate.
    assert echoscu(settings.port).returncode != 0
    anonymous = echoscu(settings.port, "+tla", "+cf", str(certs["ca.crt"]))
    assert anonymous.returncode != 0
    assert echoscu(settings.port, *tls).returncode == 0


def test_tls_settings_must_name_existing_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tls_certificate and tls_private_key"):
        Settings(tls_certificate=tmp_path / "x.crt")
    with pytest.raises(ValueError, match="does not exist"):
        Settings(tls_certificate=tmp_path / "x.crt", tls_private_key=tmp_path / "x.key")


def test_associations_beyond_the_limit_are_rejected(scp) -> None:
    from pynetdicom import AE

    settings = scp(max_associations=2)
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context("1.2.840.10008.1.1")
    held = [ae.associate("127.0.0.1", settings.port, ae_title=AET) for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        third = echoscu(settings.port)
        assert "Local Limit Exceeded" in third.stderr, third.stderr
    finally:
        for assoc in held:
            assoc.release()
    assert echoscu(settings.port).returncode == 0


def test_refused_presentation_contexts_are_logged_by_name_once(scp, tmp_path: Path,
                                                               caplog) -> None:
    """A sender of a CT image sees "No presentation context"; the node's log says which SOP
    class it refused and why, in one line for the association."""
    settings = scp()
    ct = make_mg("R", "CC", study_uid="1.2.826.0.1.27")
    ct.SOPClassUID = ct.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ct.Modality = "CT"
    path = tmp_path / "ct.dcm"
    ct.save_as(path, enforce_file_format=True)
    sent = storescu(settings.port, AET, [path], "-R")  # propose only the file's SOP class
    assert "no presentation context" in sent.stderr.lower() or sent.returncode != 0, \
        sent.stderr
    line = "CT Image Storage: SOP class not accepted by the node"
    wait_for(lambda: line in caplog.text, 5.0, interval=0.05, what=f"the log line {line!r}")
    refusals = [r for r in caplog.records if "refused" in r.getMessage()
                and "proposed presentation context" in r.getMessage()]
    assert len(refusals) == 1, caplog.text
    assert refusals[0].levelname == "WARNING"
    # storescu proposes the CT class once per transfer syntax it can send it in
    assert re.search(r"(\d+) of \1 proposed presentation context\(s\) refused \(none "
                     r"accepted", refusals[0].getMessage()), refusals[0].getMessage()
