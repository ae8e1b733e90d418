"""Compressed input: real files compressed by dcmtk and OpenJPEG, sent by storescu,
stored as received and decoded by the node's decoders to the same pixels."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from pydicom import dcmread
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE

from mammo_scp.db import Database
from mammo_scp.jobs.models import Instance
from tests.support.mg import make_mg
from tests.support.peers import NodeProcess, free_port, storescu, write_config

AET = "MAMMO_SCP"


def _dcmtk(*command: str) -> Callable[[Path, Path], None]:
    def compress(source: Path, target: Path) -> None:
        subprocess.run([*command, str(source), str(target)], check=True, capture_output=True)
    return compress


def _openjpeg(syntax: str, **options: object) -> Callable[[Path, Path], None]:
    def compress(source: Path, target: Path) -> None:
        ds = dcmread(source)
        ds.compress(syntax, encoding_plugin="pylibjpeg", **options)
        ds.save_as(target, enforce_file_format=True)
    return compress


# (transfer syntax, encoder, bits stored, lossless, storescu option that proposes it;
#  None: dcmtk's storescu cannot propose it, pynetdicom's SCU sends the dcmtk-made file)
CASES = [
    (ImplicitVRLittleEndian, _dcmtk("dcmconv", "+ti"), 12, True, "-xi"),
    (DeflatedExplicitVRLittleEndian, _dcmtk("dcmconv", "+td"), 12, True, "-xd"),
    (JPEGBaseline8Bit, _dcmtk("dcmcjpeg", "+eb"), 8, False, "-xy"),
    (JPEGExtended12Bit, _dcmtk("dcmcjpeg", "+ee"), 12, False, "-xx"),
    (JPEGLossless, _dcmtk("dcmcjpeg", "+el"), 12, True, None),
    (JPEGLosslessSV1, _dcmtk("dcmcjpeg", "+e1"), 12, True, "-xs"),
    (JPEGLSLossless, _dcmtk("dcmcjpls", "+el"), 12, True, "-xt"),
    (JPEGLSNearLossless, _dcmtk("dcmcjpls", "+en"), 12, False, "-xu"),
    (JPEG2000Lossless, _openjpeg(JPEG2000Lossless), 12, True, "-xv"),
    (JPEG2000, _openjpeg(JPEG2000, j2k_cr=[10]), 12, False, "-xw"),
    (RLELossless, _dcmtk("dcmcrle"), 12, True, "-xr"),
]


def _send_with_pynetdicom(port: int, path: Path) -> int:
    ds = dcmread(path)
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=AET)
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()
    return int(status.Status)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path, Database]]:
    tmp = tmp_path_factory.mktemp("ts-node")
    port = free_port()
    url = f"sqlite:///{tmp / 'node.db'}"
    config = write_config(tmp / "node.toml", {
        "port": port, "bind_address": "127.0.0.1", "data_dir": str(tmp / "data"),
        "database_url": url, "workers": 0, "min_free_mb": 1})
    process = NodeProcess("serve", config, tmp / "serve.log").start()
    try:
        process.wait_listening(port, AET)
        yield port, tmp / "data" / "spool", Database(url)
    finally:
        process.stop()


@pytest.mark.parametrize("syntax,encode,bits,lossless,propose", CASES,
                         ids=[c[0].name for c in CASES])
def test_compressed_instance_is_stored_and_decodes_to_the_same_pixels(
    node: tuple[int, Path, Database], tmp_path: Path, syntax: str,
    encode: Callable[[Path, Path], None], bits: int, lossless: bool, propose: str | None,
) -> None:
    port, spool, db = node
    original = make_mg("L", "MLO", study_uid=generate_uid(), bits_stored=bits, seed=bits)
    source = tmp_path / "original.dcm"
    original.save_as(source, enforce_file_format=True)
    sent_file = tmp_path / "compressed.dcm"
    encode(source, sent_file)
    sent = dcmread(sent_file)
    assert sent.file_meta.TransferSyntaxUID == syntax

    if propose is None:
        assert _send_with_pynetdicom(port, sent_file) == 0x0000
    else:
        # storescu converts a file to what it proposes: propose the file's own syntax.
        result = storescu(port, AET, [sent_file], propose)
        for source_ts, sent_ts in re.findall(r"Converting transfer syntax: (.+) -> (.+)",
                                             result.stderr):
            assert source_ts.strip() == sent_ts.strip(), result.stderr
        assert "Received Store Response (Success)" in result.stderr, result.stderr

    with db.session() as session:
        row = session.scalars(sa.select(Instance).where(
            Instance.sop_instance_uid == str(sent.SOPInstanceUID))).one()
    assert row.transfer_syntax == syntax
    stored = dcmread(spool / row.path)
    assert stored.file_meta.TransferSyntaxUID == syntax
    pixels = stored.pixel_array
    assert np.array_equal(pixels, sent.pixel_array)
    if lossless:
        assert np.array_equal(pixels, original.pixel_array)
    else:
        error = np.abs(pixels.astype(np.int64) - original.pixel_array.astype(np.int64))
        assert error.mean() < 0.05 * (1 << bits)
