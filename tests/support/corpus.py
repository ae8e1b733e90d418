"""A seeded corpus of bad mammograms that reaches past the headers (issue 25).

Studies of four good views (each compressed with a random transfer syntax) mixed with bad
images: compressed codestreams (RLE, JPEG baseline, JPEG-LS, JPEG 2000) and deflated
datasets corrupted at random (bit flips, truncation, overwritten or inserted runs, an RLE
segment table pointing past the data), header values replaced by values of the wrong VR
(text for numbers, several values for one, odd lengths, sequences as strings), and a few
studies of bad images only. Every input is a file, sent unparsed (``send_file_as_is``).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.tag import Tag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from tests.support.mg import FOUR_VIEWS, Patient, make_mg

COMPRESSED = (RLELossless, JPEGBaseline8Bit, JPEGLSLossless, JPEG2000Lossless)
SYNTAXES = (ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, *COMPRESSED)


@dataclass
class Input:
    """One file to send, and whether it is one of the study's good images."""

    path: Path
    sop_uid: str
    good: bool
    what: str


@dataclass
class Study:
    uid: str
    inputs: list[Input] = field(default_factory=list)

    @property
    def has_good(self) -> bool:
        return any(i.good for i in self.inputs)


def file_bytes(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dataset_start(data: bytes) -> int:
    """Where the dataset starts in a DICOM file: after preamble, 'DICM' and group 2."""
    (group_length,) = struct.unpack("<I", data[140:144])
    return 144 + group_length


def encode(ds: Dataset, syntax: str) -> Dataset:
    """``ds`` with its pixel data in ``syntax`` (JPEG baseline as an 8-bit image)."""
    if syntax == JPEGBaseline8Bit:
        pixels = np.frombuffer(ds.PixelData, np.uint16).reshape(int(ds.Rows), int(ds.Columns))
        eight = (pixels >> 4).astype(np.uint8)
        ok, jpeg = cv2.imencode(".jpg", eight, [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert ok
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.WindowCenter, ds.WindowWidth = 128, 256
        ds.PixelData = encapsulate([jpeg.tobytes()])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    elif syntax in COMPRESSED:
        plugin = "pydicom" if syntax == RLELossless else ""
        ds.compress(syntax, encoding_plugin=plugin, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    return ds


def _flip_bits(data: bytearray, rng: random.Random) -> None:
    for _ in range(rng.randint(1, 24)):
        at = rng.randrange(len(data))
        data[at] ^= 1 << rng.randrange(8)


def _overwrite(data: bytearray, rng: random.Random) -> None:
    at = rng.randrange(len(data))
    run = rng.randint(1, 64)
    fill = rng.choice([b"\x00", b"\xff", bytes([rng.randrange(256)])])
    data[at:at + run] = fill * len(data[at:at + run])


def _insert(data: bytearray, rng: random.Random) -> None:
    at = rng.randrange(len(data))
    data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))


def _truncate(data: bytearray, rng: random.Random) -> None:
    del data[rng.randint(1, max(1, len(data) - 1)):]


CODESTREAM_DAMAGE: list[tuple[str, Callable[[bytearray, random.Random], None]]] = [
    ("bit flips", _flip_bits), ("overwritten run", _overwrite), ("inserted junk", _insert),
    ("truncated", _truncate),
]


def corrupt_codestream(ds: Dataset, rng: random.Random) -> str:
    """Damage the first frame's codestream of an encapsulated image; returns what was done."""
    frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    name, damage = rng.choice(CODESTREAM_DAMAGE)
    if ds.file_meta.TransferSyntaxUID == RLELossless and rng.random() < 0.3:
        # the segment table: a segment that starts or runs past the end of the data
        segments = struct.unpack("<16L", frame[:64])
        offsets = list(segments)
        k = rng.randint(1, max(1, offsets[0]))
        offsets[k] = rng.choice([len(frame) + rng.randint(1, 999), len(frame) - 1, 3])
        frame[:64] = struct.pack("<16L", *offsets)
        name = "RLE segment offset past the data"
    else:
        damage(frame, rng)
    if not frame:
        frame = bytearray(b"\x00\x00")
    if len(frame) % 2:
        frame.append(0)
    ds.PixelData = encapsulate([bytes(frame)])
    return f"{ds.file_meta.TransferSyntaxUID.name}: {name}"


def rle_panic(ds: Dataset) -> str:
    """Issue 25's image: a two-segment RLE frame whose last run crosses the end."""
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 64, 64, 16, 12, 11
    first = bytes([0x81, 0x03] * 32)
    second = bytes([0x81, 0x20] * 31 + [0x82, 0x20, 0xFF, 0x20])
    header = struct.pack("<16L", 2, 64, 64 + len(first), *([0] * 13))
    ds.PixelData = encapsulate([header + first + second])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = RLELossless
    return "RLE decoder panic"


#: Header attributes the node reads, and values of the wrong VR or shape for each.
WRONG_VALUES: list[tuple[int, str, object]] = [
    (0x00280010, "LO", "256"), (0x00280010, "US", [256, 256]), (0x00280010, "US", 0),
    (0x00280011, "DS", "208.5"), (0x00280011, "US", 1),
    (0x00280008, "IS", "many"), (0x00280008, "LO", "one"), (0x00280008, "IS", "2"),
    (0x00280100, "US", 12), (0x00280100, "US", 0), (0x00280101, "US", 40),
    (0x00280103, "US", 7), (0x00280002, "US", 3), (0x00280004, "CS", "RGB"),
    (0x00281164, "DS", [74.7, 74.7]), (0x00181164, "DS", [0, 0]), (0x00181164, "LO", "wide"),
    (0x00280030, "DS", [0.0, 0.0]), (0x00280030, "DS", [0.1]), (0x00181164, "DS", [-1, 1]),
    (0x00200020, "CS", ["Q", "Z"]), (0x00200020, "CS", "A"),
    (0x00200062, "CS", "B"), (0x00200062, "CS", "X"), (0x00200060, "CS", "B"),
    (0x00540220, "LO", "CC"), (0x00540220, "SQ", []),
    (0x00080005, "CS", "ISO_IR 999"), (0x00100010, "PN", "DOE\x00^JA\x1bNE\\X"),
    (0x00100040, "CS", "Q"), (0x00100030, "DA", "1960-01-01"),
    (0x00081030, "LO", "x" * 300), (0x00080050, "SH", "A" * 40),
    (0x00281050, "DS", "centre"), (0x00281053, "DS", [0]), (0x00281052, "DS", "1e400"),
    (0x7FE00010, "OB", b""), (0x00280101, "US", 16), (0x00180015, "SQ", []),
    (0x00200013, "IS", "-5"), (0x001811A0, "DS", "-3"), (0x001811A0, "DS", "0"),
]


def wrong_header(ds: Dataset, rng: random.Random) -> str:
    """Replace one to three header values with values of the wrong VR or shape."""
    done = []
    for _ in range(rng.randint(1, 3)):
        tag, vr, value = rng.choice(WRONG_VALUES)
        if tag == 0x7FE00010 and ds.file_meta.TransferSyntaxUID.is_compressed:
            value = encapsulate([b"\x00\x00"])  # an empty frame, encapsulated
        if isinstance(value, str | bytes):
            # written as the raw bytes: pydicom will not make a DS of 'centre' itself
            raw = value.encode("latin-1") if isinstance(value, str) else value
            raw += b" " * (len(raw) % 2)
            ds._dict[Tag(tag)] = RawDataElement(Tag(tag), vr, len(raw), raw, 0, False, True)
        else:
            ds[tag] = DataElement(tag, vr, value)
        done.append(f"{keyword_for_tag(tag) or hex(tag)} as {vr}")
    return "header: " + ", ".join(done)


def three_byte_rows(data: bytes) -> bytes:
    """Rows stored as a 3-byte US value (explicit VR little endian files only)."""
    out = bytearray(data)
    at = out.find(b"\x28\x00\x10\x00US\x02\x00")
    if at < 0:
        return data
    out[at:at + 10] = b"\x28\x00\x10\x00US\x03\x00" + out[at + 8:at + 10] + b"\x00"
    return bytes(out)


def corrupt_deflate(data: bytes, rng: random.Random) -> bytes:
    start = dataset_start(data)
    body = bytearray(data[start:])
    rng.choice(CODESTREAM_DAMAGE)[1](body, rng)
    return data[:start] + bytes(body)


def build_corpus(directory: Path, *, seed: int, studies: int, bad_per_study: int = 3,
                 bad_only_studies: int = 4, size: tuple[int, int] = (128, 96)) -> list[Study]:
    """Write the corpus into ``directory``: ``studies`` studies of four good views and up to
    ``bad_per_study`` bad images each, plus ``bad_only_studies`` of bad images only."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    corpus = []
    for number in range(studies + bad_only_studies):
        study = Study(uid(seed, number))
        patient = Patient(f"FUZZ^{number}", f"FUZZ-{number}")
        good_views = FOUR_VIEWS if number < studies else ()
        for k, (lat, view) in enumerate(good_views, start=1):
            ds = make_mg(lat, view, study_uid=study.uid, patient=patient, rows=size[0],
                         cols=size[1], instance_number=k, seed=rng.randrange(1000),
                         sop_uid=uid(seed, number, k), series_uid=uid(seed, number, "s", k))
            syntax = rng.choice(SYNTAXES)
            encode(ds, syntax)
            study.inputs.append(_write(directory, ds, file_bytes(ds), True,
                                       f"good {ds.file_meta.TransferSyntaxUID.name}"))
        bad = rng.randint(1, bad_per_study) if good_views else rng.randint(1, 4)
        for k in range(bad):
            lat, view = rng.choice(FOUR_VIEWS)
            ds = make_mg(lat, view, study_uid=study.uid, patient=patient, rows=size[0],
                         cols=size[1], instance_number=10 + k, seed=rng.randrange(1000),
                         sop_uid=uid(seed, number, "bad", k),
                         series_uid=uid(seed, number, "s", "bad", k))
            kind = rng.random()
            if kind < 0.45:
                encode(ds, rng.choice(COMPRESSED))
                what = corrupt_codestream(ds, rng)
                data = file_bytes(ds)
            elif kind < 0.5:
                what = rle_panic(ds)
                data = file_bytes(ds)
            elif kind < 0.6:
                encode(ds, DeflatedExplicitVRLittleEndian)
                data = corrupt_deflate(file_bytes(ds), rng)
                what = "deflated: damaged"
            elif kind < 0.65:
                data = three_byte_rows(file_bytes(ds))
                what = "Rows as 3 bytes"
            else:
                if rng.random() < 0.5:
                    encode(ds, rng.choice(COMPRESSED))
                what = wrong_header(ds, rng)
                data = file_bytes(ds)
            study.inputs.append(_write(directory, ds, data, False, what))
        rng.shuffle(study.inputs)
        corpus.append(study)
    return corpus


def uid(*parts: object) -> str:
    """A UID that is the same for the same seed and position: the corpus is byte for byte
    the same on every run of a seed."""
    return str(generate_uid(entropy_srcs=[str(part) for part in parts]))


def _write(directory: Path, ds: Dataset, data: bytes, good: bool, what: str) -> Input:
    sop_uid = str(ds.SOPInstanceUID)
    path = directory / f"{sop_uid}.dcm"
    path.write_bytes(data)
    return Input(path, sop_uid, good, what)
