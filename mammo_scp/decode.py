"""Pixel data decoding where a native decoder's crash cannot reach the worker.

Compressed pixel data (JPEG, JPEG-LS, JPEG 2000, RLE) comes from the sender and is decoded
by native libraries (libjpeg, CharLS, OpenJPEG, pylibjpeg-rle in Rust). A corrupt codestream
can make them panic (pyo3's ``PanicException`` derives from BaseException, past every
``except Exception``), abort or crash the process. So compressed frames are decoded in a
process of their own (:class:`DecoderPool`, started once and reused); when it dies, hangs
or panics, only that image fails, with :class:`DecodeError` naming why, and the next image
gets a fresh decoder. Uncompressed (and deflated, already inflated by pydicom on reading)
pixel data is plain bytes and is read in the worker itself, under the same guard.

Cost (``benchmarks/decode.py``, a full-field 4-view study of 4096 x 3328 12-bit images, 2
AMD EPYC cores shared with a training job, 2026-12-05): RLE 246 -> 434 ms, JPEG-LS 3066 ->
3387 ms, JPEG 2000 5717 -> 5923 ms a study (+190 to +320 ms: each 27 MB image crosses a
pipe); starting the child costs 0.5-1.9 s once, on its first image. Uncompressed studies
cost nothing more.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import resource
import select
import struct
import subprocess
import sys
import threading
import time
from typing import BinaryIO

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag

logger = logging.getLogger(__name__)

#: Longest a decoder may take for one image before it is killed (a 4096 x 3328 JPEG 2000
#: frame takes about a second on one core).
DECODE_TIMEOUT_S = 60.0
#: Decoder processes kept for reuse (one per worker thread decoding at the same time).
MAX_IDLE = 4
#: Address space a decoder process may use: the interpreter and decoders (~0.6 GB mapped)
#: and the largest image the node accepts (max_image_pixels 120 M x 2 bytes) several times.
MAX_DECODER_BYTES = 4 * 1024**3
_PIXEL_DATA = Tag("PixelData")
_LENGTH = struct.Struct("<Q")


class DecodeError(Exception):
    """The pixel data of one image cannot be decoded; the message says why (log-safe)."""


def is_fatal(exc: BaseException) -> bool:
    """True for what must stop the process (Ctrl-C, sys.exit), never caught by a boundary."""
    return isinstance(exc, KeyboardInterrupt | SystemExit)


def describe(exc: BaseException) -> str:
    """``Type: message`` on one line, at most 300 characters (for skip reasons and logs)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def decode_pixels(ds: Dataset) -> np.ndarray:
    """The stored pixel values of a one-frame image; DecodeError when they cannot be had.

    Compressed transfer syntaxes are decoded in a separate process (:data:`DECODERS`).
    """
    try:
        syntax = ds.file_meta.TransferSyntaxUID
        compressed = bool(syntax.is_compressed)
    except BaseException as exc:  # noqa: BLE001 - a bad header must not pass this boundary
        if is_fatal(exc):
            raise
        raise DecodeError(f"no usable transfer syntax: {describe(exc)}") from None
    if compressed:
        return DECODERS.decode(pixel_module(ds))
    try:
        return np.asarray(ds.pixel_array)
    except BaseException as exc:  # noqa: BLE001 - native code may raise BaseException
        if is_fatal(exc):
            raise
        raise DecodeError(f"pixel data cannot be decoded: {describe(exc)}") from None


def pixel_module(ds: Dataset) -> Dataset:
    """What a decoder needs: the Image Pixel attributes (group 0028), Pixel Data and the
    transfer syntax; no patient data crosses to the decoder process."""
    try:
        out = Dataset()
        for element in ds:
            if element.tag.group == 0x0028 or element.tag == _PIXEL_DATA:
                out.add(element)
        out.file_meta = FileMetaDataset()
        out.file_meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID
    except BaseException as exc:  # noqa: BLE001
        if is_fatal(exc):
            raise
        raise DecodeError(f"image pixel attributes cannot be read: {describe(exc)}") from None
    return out


def _write_message(stream: BinaryIO, payload: object) -> None:
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)))
    stream.write(data)
    stream.flush()


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    chunks = []
    while size:
        chunk = stream.read(size)
        if not chunk:
            raise EOFError("the other end closed the pipe")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _read_message(stream: BinaryIO) -> object:
    (size,) = _LENGTH.unpack(_read_exactly(stream, _LENGTH.size))
    return pickle.loads(_read_exactly(stream, size))  # noqa: S301 - our own child's answer


class _Decoder:
    """One decoder child: ``python -m mammo_scp.decode``, pickled messages over its pipes."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "mammo_scp.decode"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True,
            env={**os.environ, "RUST_BACKTRACE": "0"})

    def decode(self, module: Dataset, timeout_s: float) -> object:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        _write_message(self.proc.stdin, module)  # type: ignore[arg-type]
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        if not ready:
            raise TimeoutError(f"no answer in {timeout_s:.0f} s")
        return _read_message(self.proc.stdout)  # type: ignore[arg-type]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):  # a flush into a dead child's pipe
                    stream.close()


class DecoderPool:
    """Decoder processes, started when first needed and reused; safe across threads."""

    def __init__(self, timeout_s: float = DECODE_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._idle: list[_Decoder] = []
        self._lock = threading.Lock()
        #: Decoders replaced after a crash, a hang or a broken pipe (for tests and logs).
        self.crashes = 0

    def decode(self, module: Dataset) -> np.ndarray:
        """Decode the pixel data of ``module`` (see :func:`pixel_module`) in a child."""
        decoder = None
        with self._lock:
            while self._idle and decoder is None:
                decoder = self._idle.pop()
                if decoder.proc.poll() is not None:  # died while idle (killed): not this image's
                    decoder.close()
                    decoder = None
        if decoder is None:
            decoder = _Decoder()
        started = time.perf_counter()
        try:
            answer = decoder.decode(module, self.timeout_s)
        except (OSError, EOFError, TimeoutError, pickle.UnpicklingError) as exc:
            code = decoder.proc.poll()
            decoder.close()
            with self._lock:
                self.crashes += 1
            why = f"exit code {code}" if code is not None else describe(exc)
            logger.warning("pixel decoder process died (%s); a new one takes the next image",
                           why)
            raise DecodeError(f"the decoder crashed on this pixel data ({why})") from None
        with self._lock:
            if len(self._idle) < MAX_IDLE:
                self._idle.append(decoder)
                decoder = None
        if decoder is not None:
            decoder.close()
        if isinstance(answer, np.ndarray):
            logger.debug("decoded %s pixels in a child in %.0f ms", answer.shape,
                         (time.perf_counter() - started) * 1e3)
            return answer
        raise DecodeError(f"pixel data cannot be decoded: {answer}")

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for decoder in idle:
            decoder.close()


#: The process's decoders.
DECODERS = DecoderPool()


def _serve(requests: BinaryIO, answers: BinaryIO) -> None:
    """The decoder child: decode each request; answer the array, or a one-line reason.

    Its address space is capped (:data:`MAX_DECODER_BYTES`), so a codestream that claims a
    gigantic image fails to allocate here instead of exhausting the host's memory.
    """
    with contextlib.suppress(ValueError, OSError):  # not Linux, or a lower hard limit
        resource.setrlimit(resource.RLIMIT_AS, (MAX_DECODER_BYTES, MAX_DECODER_BYTES))
    while True:
        try:
            module = _read_message(requests)
        except EOFError:
            return  # the worker is gone or closed us
        try:
            assert isinstance(module, Dataset)
            answer: object = np.ascontiguousarray(module.pixel_array)
        except BaseException as exc:  # noqa: BLE001 - a Rust panic is a BaseException
            if is_fatal(exc):
                raise
            answer = describe(exc)
        _write_message(answers, answer)


if __name__ == "__main__":
    _serve(sys.stdin.buffer, sys.stdout.buffer)
