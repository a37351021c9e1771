"""Decoded-size limits: a frame's pixel count is read from the compressed header (PNG, JPEG, BMP) or
from width x height of a raw image, and a frame over the limit is refused before anything is decoded
or allocated; OpenCV errors come back as ImageError subclasses, so a caller counts them as drops."""
from __future__ import annotations

import struct
import time
import zlib

import cv2
import numpy as np
import pytest

from vpr_core.images import (ImageError, ImageTooLarge, OpenCVError, compressed_size, decode_compressed, decode_raw,
                             encode_jpeg)


def _rgb(h=48, w=64):
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


def _encode(rgb, ext, *params):
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), list(params))
    assert ok
    return buf.tobytes()


def _png_claiming(width, height):
    """A real 8x8 PNG whose IHDR says width x height (CRC fixed, so only the size is a lie)."""
    b = bytearray(_encode(_rgb(8, 8), ".png"))
    b[16:24] = struct.pack(">II", width, height)
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
    return bytes(b)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "jpeg-progressive", "bmp", "png-gray"])
def test_compressed_size_is_read_from_the_header(fmt, corridor_images):
    rgb = corridor_images[0]
    data = {"png": lambda: _encode(rgb, ".png"), "jpeg": lambda: encode_jpeg(rgb),
            "jpeg-progressive": lambda: _encode(rgb, ".jpg", cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
            "bmp": lambda: _encode(rgb, ".bmp"),
            "png-gray": lambda: cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))[1].tobytes()}[fmt]()
    h, w = rgb.shape[:2]
    assert compressed_size(data) == (w, h)
    assert decode_compressed(data, max_pixels=w * h).shape == (h, w, 3)  # exactly at the limit: decoded


def test_jpeg_with_exif_and_comment_segments_before_the_frame_header():
    jpeg = bytearray(encode_jpeg(_rgb(30, 50)))
    extra = b"\xff\xe1" + struct.pack(">H", 2 + 20) + b"Exif\0\0" + b"\0" * 14 + b"\xff\xfe" + struct.pack(">H", 7) + b"hello"
    jpeg[2:2] = extra
    assert compressed_size(bytes(jpeg)) == (50, 30)


@pytest.mark.parametrize("data", [b"", b"\xff\xd8", b"\xff\xd8\xff\xda\0\x02", b"\x89PNG\r\n\x1a\n",
                                  b"GIF89a....", b"RIFF\0\0\0\0WEBPVP8 ", b"\x00" * 64])
def test_unknown_or_truncated_headers_give_no_size(data):
    assert compressed_size(data) is None


def test_a_png_claiming_a_huge_size_is_refused_before_decoding():
    bomb = _png_claiming(20000, 20000)  # 400 Mpx: OpenCV would allocate 1.2 GB before noticing the data is short
    t0 = time.perf_counter()
    with pytest.raises(ImageTooLarge, match=r"20000x20000.*max_image_pixels"):
        decode_compressed(bomb, max_pixels=16_777_216)
    assert time.perf_counter() - t0 < 0.5


def test_one_pixel_over_the_limit_is_refused():
    data = _encode(_rgb(48, 64), ".png")
    with pytest.raises(ImageTooLarge):
        decode_compressed(data, max_pixels=48 * 64 - 1)
    assert isinstance(ImageTooLarge("x"), ImageError)  # callers that only know ImageError still drop it


def test_with_a_limit_an_unreadable_size_is_refused_naming_the_formats():
    with pytest.raises(ImageError, match="JPEG, PNG"):
        decode_compressed(b"GIF89a" + b"\0" * 100, max_pixels=1000)


def test_raw_image_over_the_limit_is_refused_from_width_and_height():
    with pytest.raises(ImageTooLarge, match=r"100000x100000"):
        decode_raw(b"\0" * 16, 100000, 100000, "rgb8", max_pixels=16_777_216)
    img = decode_raw(_rgb(10, 20).tobytes(), 10, 20, "rgb8", max_pixels=200)
    assert img.shape == (10, 20, 3)
    with pytest.raises(ImageTooLarge):
        decode_raw(_rgb(10, 20).tobytes(), 10, 20, "rgb8", max_pixels=199)


def test_opencv_errors_come_back_as_image_errors():
    """A PNG claiming 70000x70000 trips OpenCV's own limit: cv2.error before, OpenCVError (an ImageError) now."""
    with pytest.raises(OpenCVError, match="OpenCV"):
        decode_compressed(_png_claiming(70000, 70000))
