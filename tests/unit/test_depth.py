"""vpr_core.depth: depth images keep their values and units (32FC1 metres, 16UC1 millimetres)."""
from __future__ import annotations

import numpy as np
import pytest

from vpr_core.depth import decode_depth
from vpr_core.images import ImageError


def test_float_metres_with_row_padding():
    d = np.arange(12, dtype=np.float32).reshape(3, 4) / 4
    padded = np.zeros((3, 4 * 4 + 8), np.uint8)
    padded[:, :16] = d.view(np.uint8).reshape(3, 16)
    out = decode_depth(padded.tobytes(), 3, 4, "32FC1", step=24)
    assert out.dtype == np.float32 and np.array_equal(out, d)


def test_millimetres_big_endian():
    d = np.array([[0, 1500], [65535, 250]], np.uint16)
    out = decode_depth(d.astype(">u2").tobytes(), 2, 2, "16UC1", is_bigendian=True)
    assert out.dtype == np.uint16 and np.array_equal(out, d)


@pytest.mark.parametrize("args,match", [
    ((b"\0" * 16, 2, 2, "rgb8"), "unsupported depth encoding"),
    ((b"\0" * 15, 2, 2, "32FC1"), "cannot hold"),
    ((b"\0" * 16, 0, 2, "32FC1"), "no pixels"),
    ((b"\0" * 64, 2, 2, "32FC1", 4), "cannot hold"),  # step shorter than a row
])
def test_bad_depth_images_say_what_is_wrong(args, match):
    with pytest.raises(ImageError, match=match):
        decode_depth(*args)
