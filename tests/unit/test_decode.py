"""Pixel decoding where a native decoder's panic or crash costs one image, never the worker."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, generate_uid

from mammo_scp.decode import DecodeError, DecoderPool, decode_pixels, pixel_module
from mammo_scp.preprocess import presentation_image
from tests.support.corpus import rle_panic
from tests.support.mg import breast_phantom, make_mg


def panicking_rle() -> Dataset:
    """Issue 25's image: a 64x64 16-bit RLE image whose second segment's last run crosses
    the end of the frame; pylibjpeg-rle panics (pyo3 PanicException, a BaseException)."""
    ds = make_mg("R", "CC", study_uid=generate_uid(), pixels=np.zeros((64, 64), np.uint16))
    rle_panic(ds)
    return ds


def jpeg2000(rows: int = 128, cols: int = 96) -> Dataset:
    ds = make_mg("L", "CC", study_uid=generate_uid(), rows=rows, cols=cols)
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    return ds


def test_a_panicking_rle_decoder_is_one_image_s_decode_error() -> None:
    ds = panicking_rle()
    with pytest.raises(DecodeError, match="PanicException"):
        decode_pixels(ds)
    with pytest.raises(DecodeError):  # what the analyzer calls
        presentation_image(ds)


def test_compressed_pixels_decode_in_a_child_as_in_process() -> None:
    ds = jpeg2000()
    expected = breast_phantom(128, 96, "L")
    assert np.array_equal(decode_pixels(ds), expected)


def test_a_decoder_process_that_dies_costs_only_its_image() -> None:
    pool = DecoderPool(timeout_s=30)
    try:
        module = pixel_module(jpeg2000())
        first = pool.decode(module)
        idle = pool._idle[0]
        os.kill(idle.proc.pid, signal.SIGKILL)  # as a segfault would end it
        idle.proc.wait()
        assert np.array_equal(pool.decode(module), first)  # a new decoder takes it
        # one that dies while decoding: this image fails, the next is decoded
        busy = pool._idle[0]
        real_decode = busy.decode

        def die_midway(module: Dataset, timeout_s: float) -> object:
            os.kill(busy.proc.pid, signal.SIGKILL)
            busy.proc.wait()
            return real_decode(module, timeout_s)

        busy.decode = die_midway  # type: ignore[method-assign]
        with pytest.raises(DecodeError, match="decoder crashed"):
            pool.decode(module)
        assert pool.crashes == 1
        assert np.array_equal(pool.decode(module), first)
    finally:
        pool.close()
