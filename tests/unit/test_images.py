"""vpr_core.images: raw ROS buffers, compressed bytes and files -> RGB uint8."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from vpr_core.images import (ENCODINGS, ImageError, decode_compressed, decode_raw, encode_jpeg, encode_raw,
                             load_image, validate_rgb)

H, W = 6, 8
COLOUR = (200, 100, 50)  # R, G, B: all different, so any channel swap shows


def _rgb(seed: int = 0) -> np.ndarray:
    """A random RGB image whose three channels are different everywhere."""
    return np.random.default_rng(seed).integers(0, 256, size=(H, W, 3), dtype=np.uint8)


def _pad_rows(rows: np.ndarray, extra: int, fill: int = 0xEE) -> tuple[bytes, int]:
    """Row-major byte image (H, row_bytes) -> bytes with `extra` junk bytes after every row, and the step."""
    rows = rows.reshape(rows.shape[0], -1)
    pad = np.full((rows.shape[0], extra), fill, dtype=np.uint8)
    return np.hstack([rows, pad]).tobytes(), rows.shape[1] + extra


# ---- 8-bit colour and mono ----------------------------------------------------------------------

def test_rgb8_round_trip_is_exact():
    rgb = _rgb()
    out = decode_raw(rgb.tobytes(), H, W, "rgb8")
    assert out.dtype == np.uint8 and out.shape == (H, W, 3)
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("encoding", ["bgr8", "8UC3"])
def test_bgr8_is_swapped_to_rgb(encoding):
    rgb = _rgb(1)
    bgr = rgb[:, :, ::-1].copy()
    out = decode_raw(bgr.tobytes(), H, W, encoding)
    np.testing.assert_array_equal(out, rgb)
    # and the naive reading (no swap) would be wrong, so the test can fail
    assert not np.array_equal(out, bgr)


@pytest.mark.parametrize("encoding, order", [("rgba8", [0, 1, 2]), ("bgra8", [2, 1, 0])])
def test_four_channel_encodings_drop_alpha(encoding, order):
    rgb = _rgb(2)
    alpha = np.full((H, W, 1), 7, np.uint8)
    raw = np.concatenate([rgb[:, :, order], alpha], axis=2)
    np.testing.assert_array_equal(decode_raw(raw.tobytes(), H, W, encoding), rgb)


@pytest.mark.parametrize("encoding", ["mono8", "8UC1"])
def test_mono8_becomes_grey_rgb(encoding):
    grey = np.arange(H * W, dtype=np.uint8).reshape(H, W) * 3
    out = decode_raw(grey.tobytes(), H, W, encoding)
    assert out.shape == (H, W, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], grey)


def test_encode_raw_decode_raw_round_trip():
    rgb = _rgb(3)
    for enc in ("rgb8", "bgr8"):
        data, step = encode_raw(rgb, enc)
        assert step == W * 3
        np.testing.assert_array_equal(decode_raw(data, H, W, enc, step), rgb)
    data, step = encode_raw(rgb, "mono8")
    assert step == W
    out = decode_raw(data, H, W, "mono8", step)
    np.testing.assert_array_equal(out[:, :, 0], cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    with pytest.raises(ImageError, match="yuv422"):
        encode_raw(rgb, "yuv422")


def test_decode_raw_accepts_numpy_and_memoryview_buffers():
    rgb = _rgb(4)
    flat = np.frombuffer(rgb.tobytes(), np.uint8)
    np.testing.assert_array_equal(decode_raw(flat, H, W, "rgb8"), rgb)
    np.testing.assert_array_equal(decode_raw(memoryview(rgb.tobytes()), H, W, "rgb8"), rgb)


# ---- 16-bit -------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["mono16", "16UC1"])
@pytest.mark.parametrize("bigendian", [False, True])
def test_16bit_mono_keeps_the_high_byte_in_either_byte_order(encoding, bigendian):
    rng = np.random.default_rng(5)
    img16 = rng.integers(0, 65536, size=(H, W), dtype=np.uint16)
    data = img16.astype(">u2" if bigendian else "<u2").tobytes()
    out = decode_raw(data, H, W, encoding, is_bigendian=bigendian)
    expected = (img16 >> 8).astype(np.uint8)
    assert out.shape == (H, W, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], expected)


def test_16bit_byte_order_matters():
    """0x1234 little-endian read as big-endian is 0x3412: the flag really changes the result."""
    img16 = np.full((H, W), 0x1234, dtype=np.uint16)
    data = img16.astype("<u2").tobytes()
    assert decode_raw(data, H, W, "mono16", is_bigendian=False)[0, 0, 0] == 0x12
    assert decode_raw(data, H, W, "mono16", is_bigendian=True)[0, 0, 0] == 0x34


@pytest.mark.parametrize("bigendian", [False, True])
def test_rgb16_and_bgr16(bigendian):
    rgb = _rgb(6)
    rgb16 = rgb.astype(np.uint16) * 256 + 0x7F  # low byte is noise that must be dropped
    dt = ">u2" if bigendian else "<u2"
    out = decode_raw(rgb16.astype(dt).tobytes(), H, W, "rgb16", is_bigendian=bigendian)
    np.testing.assert_array_equal(out, rgb)
    out = decode_raw(rgb16[:, :, ::-1].astype(dt).tobytes(), H, W, "bgr16", is_bigendian=bigendian)
    np.testing.assert_array_equal(out, rgb)


# ---- step (row padding) ---------------------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8"])
def test_step_padding_is_skipped(encoding):
    rgb = _rgb(7)
    packed, _ = encode_raw(rgb, encoding)
    row_bytes = W * (1 if encoding == "mono8" else 3)
    data, step = _pad_rows(np.frombuffer(packed, np.uint8).reshape(H, row_bytes), extra=5)
    assert step == row_bytes + 5
    np.testing.assert_array_equal(decode_raw(data, H, W, encoding, step=step),
                                  decode_raw(packed, H, W, encoding))


def test_step_padding_without_trailing_padding_on_last_row():
    """Drivers may omit the padding after the last row: step*(H-1)+row bytes is enough."""
    rgb = _rgb(8)
    data, step = _pad_rows(rgb, extra=4)
    data = data[:-4]
    np.testing.assert_array_equal(decode_raw(data, H, W, "rgb8", step=step), rgb)


def test_step_padding_with_16bit_big_endian():
    img16 = np.random.default_rng(9).integers(0, 65536, size=(H, W), dtype=np.uint16)
    rows = np.frombuffer(img16.astype(">u2").tobytes(), np.uint8).reshape(H, W * 2)
    data, step = _pad_rows(rows, extra=3)  # odd padding: rows start at odd byte offsets
    out = decode_raw(data, H, W, "mono16", step=step, is_bigendian=True)
    np.testing.assert_array_equal(out[:, :, 0], (img16 >> 8).astype(np.uint8))


# ---- Bayer and YUV ----------------------------------------------------------------------------

def _mosaic(pattern: str, colour=COLOUR, h: int = 8, w: int = 8) -> np.ndarray:
    """A uniform-colour scene as a Bayer sensor with the given 2x2 pattern ('rggb', ...) sees it."""
    value = {"r": colour[0], "g": colour[1], "b": colour[2]}
    out = np.zeros((h, w), np.uint8)
    for k, ch in enumerate(pattern):
        out[k // 2::2, k % 2::2] = value[ch]
    return out


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_patterns_give_the_right_colour(pattern):
    raw = _mosaic(pattern)
    out = decode_raw(raw.tobytes(), 8, 8, f"bayer_{pattern}8")
    assert out.shape == (8, 8, 3)
    centre = out[2:-2, 2:-2].reshape(-1, 3).astype(int)
    assert np.all(np.abs(centre - np.array(COLOUR)) <= 2), f"{pattern}: got {centre[0]}, want {COLOUR}"


def _yuv(colour=COLOUR) -> tuple[int, int, int]:
    """BT.601 studio-range YUV of an RGB colour: the convention of OpenCV's (and cv_bridge's) YUV422 decoders."""
    r, g, b = colour
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    return tuple(int(round(np.clip(c, 0, 255))) for c in (y, u, v))


@pytest.mark.parametrize("encoding, order", [("yuv422", "UYVY"), ("uyvy", "UYVY"),
                                             ("yuv422_yuy2", "YUYV"), ("yuyv", "YUYV")])
def test_yuv422_byte_orders(encoding, order):
    y, u, v = _yuv()
    macro = bytes({"Y": y, "U": u, "V": v}[c] for c in order)  # two pixels per 4 bytes
    data = macro * (H * W // 2)
    out = decode_raw(data, H, W, encoding)
    assert out.shape == (H, W, 3)
    got = out.reshape(-1, 3).astype(int)
    assert np.all(np.abs(got - np.array(COLOUR)) <= 6), f"{encoding}: got {got[0]}, want {COLOUR}"


def test_yuv422_orders_are_not_interchangeable():
    """Reading UYVY bytes as YUY2 gives a different colour, so the table entries really matter."""
    y, u, v = _yuv()
    data = bytes([u, y, v, y]) * (H * W // 2)
    assert not np.array_equal(decode_raw(data, H, W, "yuv422"), decode_raw(data, H, W, "yuv422_yuy2"))


# ---- errors -------------------------------------------------------------------------------------

def test_unknown_encoding_names_the_supported_ones():
    with pytest.raises(ImageError) as info:
        decode_raw(b"\0" * 100, 2, 2, "rgb9")
    msg = str(info.value)
    assert "rgb9" in msg
    for name in ("rgb8", "bgr8", "mono16", "bayer_rggb8", "yuv422"):
        assert name in msg
    assert set(ENCODINGS) <= set(msg.replace(",", " ").split())


@pytest.mark.parametrize("encoding, bpp", [("rgb8", 3), ("mono8", 1), ("mono16", 2)])
def test_short_buffer_is_rejected(encoding, bpp):
    needed = H * W * bpp
    with pytest.raises(ImageError, match=str(needed)):
        decode_raw(b"\0" * (needed - 1), H, W, encoding)
    decode_raw(b"\0" * needed, H, W, encoding)  # exactly enough is fine


def test_short_buffer_with_step_is_rejected():
    step = W * 3 + 4
    needed = step * (H - 1) + W * 3
    with pytest.raises(ImageError):
        decode_raw(b"\0" * (needed - 1), H, W, "rgb8", step=step)


def test_step_smaller_than_a_row_is_rejected():
    with pytest.raises(ImageError, match="step"):
        decode_raw(b"\0" * 1000, H, W, "rgb8", step=W * 3 - 1)


@pytest.mark.parametrize("h, w", [(0, 4), (4, 0), (-1, 4)])
def test_empty_image_size_is_rejected(h, w):
    with pytest.raises(ImageError):
        decode_raw(b"\0" * 100, h, w, "rgb8")


# ---- compressed -----------------------------------------------------------------------------------

def test_decode_compressed_png_is_exact_and_rgb():
    rgb = _rgb(10)
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    np.testing.assert_array_equal(decode_compressed(png.tobytes()), rgb)
    np.testing.assert_array_equal(decode_compressed(png), rgb)  # numpy buffer too


def test_decode_compressed_grey_png_gives_three_channels():
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    ok, png = cv2.imencode(".png", grey)
    out = decode_compressed(png.tobytes())
    assert out.shape == (6, 8, 3)
    np.testing.assert_array_equal(out[:, :, 1], grey)


def test_encode_jpeg_keeps_channel_order():
    img = np.zeros((16, 16, 3), np.uint8)
    img[..., 0] = 220  # pure-ish red
    out = decode_compressed(encode_jpeg(img, quality=95))
    r, g, b = out[8, 8].astype(int)
    assert r > 180 and g < 40 and b < 40


def test_decode_real_corridor_jpeg(corridor_root):
    data = (corridor_root / "query" / "0000000.jpg").read_bytes()
    img = decode_compressed(data)
    assert img.shape == (120, 160, 3) and img.dtype == np.uint8
    # same pixels as OpenCV's own reader, but in RGB order
    ref = cv2.imread(str(corridor_root / "query" / "0000000.jpg"), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(img, ref[:, :, ::-1])


def test_truncated_jpeg_is_an_error_or_a_valid_image(corridor_root):
    data = (corridor_root / "query" / "0000005.jpg").read_bytes()
    half = data[: len(data) // 2]
    try:
        img = decode_compressed(half)
    except ImageError:
        return
    # OpenCV may decode a partially-broken JPEG (grey bottom half): it must still be a sane image
    assert img.shape == (120, 160, 3) and img.dtype == np.uint8


def test_jpeg_header_only_is_an_error(corridor_root):
    data = (corridor_root / "query" / "0000005.jpg").read_bytes()
    with pytest.raises(ImageError):
        decode_compressed(data[:20])


@pytest.mark.parametrize("data", [b"", bytearray(), b"this is not an image at all" * 10,
                                  bytes(range(256)) * 4], ids=["empty", "empty-bytearray", "text", "binary"])
def test_garbage_and_empty_bytes_raise(data):
    with pytest.raises(ImageError):
        decode_compressed(data)


def test_load_image_real_file(corridor_root):
    img = load_image(corridor_root / "database" / "0000003.jpg")
    assert img.shape == (120, 160, 3) and img.dtype == np.uint8
    assert img.std() > 5  # real content, not a blank image
    assert load_image(str(corridor_root / "database" / "0000003.jpg")).shape == img.shape


def test_load_image_missing_file(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(ImageError, match="nope.jpg"):
        load_image(missing)


def test_load_image_directory_and_corrupt_file(tmp_path):
    with pytest.raises(ImageError):
        load_image(tmp_path)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff" + b"\0" * 50)
    with pytest.raises(ImageError, match="bad.jpg"):
        load_image(bad)


def test_load_image_truncated_file(tmp_path, corridor_root):
    data = (corridor_root / "query" / "0000007.jpg").read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    try:
        img = load_image(cut)
    except ImageError as exc:
        assert "cut.jpg" in str(exc)
        return
    assert img.shape == (120, 160, 3) and img.dtype == np.uint8


# ---- validate_rgb ---------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [None, [[1, 2, 3]], np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8),
                                 np.zeros((4, 4, 3), np.float32), np.zeros((0, 4, 3), np.uint8)],
                         ids=["none", "list", "2d", "4ch", "float", "empty"])
def test_validate_rgb_rejects(bad):
    with pytest.raises(ImageError):
        validate_rgb(bad)


def test_validate_rgb_accepts_and_returns_the_same_array():
    img = _rgb()
    assert validate_rgb(img) is img


@pytest.mark.parametrize("encoding", ["yuv422", "yuv422_yuy2"])
def test_yuv422_with_odd_width_is_an_image_error(encoding):
    with pytest.raises(ImageError):
        decode_raw(bytes(4 * 7 * 2), 4, 7, encoding)
