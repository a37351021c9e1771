"""Image decoding for every input path: ROS raw buffers, compressed bytes and files, all to RGB uint8.

No ROS here: `vpr_ros` hands over the raw fields of a `sensor_msgs/Image` and gets an RGB array
back, so the same code is unit-tested without ROS and used by the offline readers.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np


class ImageError(ValueError):
    """An image could not be turned into RGB: corrupt bytes, wrong size, unsupported encoding."""


class ImageTooLarge(ImageError):
    """An image has more pixels than the caller allows (node.max_image_pixels); refused undecoded."""


class OpenCVError(ImageError):
    """OpenCV itself failed on an image (cv2.error), e.g. its own size limit or an internal assertion."""


def check_pixels(width: int, height: int, max_pixels: int, what: str = "image") -> None:
    """Raise ImageTooLarge if width x height exceeds max_pixels (0 = no limit)."""
    if max_pixels and width * height > max_pixels:
        raise ImageTooLarge(f"{what} is {width}x{height} = {width * height} pixels, above node.max_image_pixels "
                            f"({max_pixels}); it was not decoded")


# ---- image size from a compressed header, without decoding ------------------------------------------
def _png_size(b: bytes) -> Optional[Tuple[int, int]]:
    if len(b) < 24 or b[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", b[16:24])


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(b: bytes) -> Optional[Tuple[int, int]]:
    """Walk the marker segments to the first frame header (SOFn): height and width are in it."""
    i = 2
    while i + 4 <= len(b):
        if b[i] != 0xFF:
            return None
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        (length,) = struct.unpack(">H", b[i + 2:i + 4])
        if marker in _JPEG_SOF:
            if length < 7 or i + 9 > len(b):
                return None
            height, width = struct.unpack(">HH", b[i + 5:i + 9])
            return width, height
        if length < 2:
            return None
        i += 2 + length
    return None


def _bmp_size(b: bytes) -> Optional[Tuple[int, int]]:
    if len(b) < 26:
        return None
    (dib,) = struct.unpack("<I", b[14:18])
    if dib == 12:  # BITMAPCOREHEADER
        return struct.unpack("<HH", b[18:22])
    width, height = struct.unpack("<ii", b[18:26])
    return abs(width), abs(height)  # negative height = rows stored top-down


SIZE_READERS: Dict[bytes, Callable[[bytes], Optional[Tuple[int, int]]]] = {  # file signature -> header reader
    b"\x89PNG\r\n\x1a\n": _png_size,
    b"\xff\xd8": _jpeg_size,
    b"BM": _bmp_size,
}


def compressed_size(data: Union[bytes, bytearray, memoryview, np.ndarray]) -> Optional[Tuple[int, int]]:
    """(width, height) from a JPEG, PNG or BMP header without decoding; None for other or broken data."""
    head = bytes(memoryview(data)[:1 << 16]) if not isinstance(data, np.ndarray) else data[:1 << 16].tobytes()
    for signature, reader in SIZE_READERS.items():
        if head.startswith(signature):
            try:
                return reader(head)
            except struct.error:
                return None
    return None


def image_contrast(rgb: np.ndarray) -> float:
    """Standard deviation of the grey levels on a 0-1 scale, on a 64x48 thumbnail (microseconds). A tunnel,
    a lens cap or a blown-out frame is near 0: such a frame looks like every other such frame."""
    img = np.asarray(rgb)
    scale = 255.0 if img.dtype == np.uint8 else 65535.0 if img.dtype == np.uint16 else 1.0
    # shrink first, in the image's own type: converting a 640x480 frame to float before resizing cost ~5 ms
    thumb = cv2.resize(img, (64, 48), interpolation=cv2.INTER_AREA) if img.shape[0] * img.shape[1] > 64 * 48 else img
    grey = thumb.astype(np.float32).mean(axis=2) if thumb.ndim == 3 else thumb.astype(np.float32)
    return float(grey.std() / scale)


def _to8(img: np.ndarray) -> np.ndarray:
    """16-bit intensity to 8-bit by dropping the low byte (keeps relative brightness)."""
    return (img >> 8).astype(np.uint8)


@dataclass(frozen=True)
class Encoding:
    channels: int
    dtype: str  # numpy dtype of one channel, little-endian form
    to_rgb: Callable[[np.ndarray], np.ndarray]


def _gray(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)


def _cvt(code: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda img: cv2.cvtColor(np.ascontiguousarray(img), code)


# ROS encoding name -> how to read it. Bayer names follow cv_bridge: OpenCV names the pattern by
# the second row, so ROS "rggb" is OpenCV "BayerBG".
ENCODINGS: Dict[str, Encoding] = {
    "rgb8": Encoding(3, "u1", lambda img: img),
    "bgr8": Encoding(3, "u1", _cvt(cv2.COLOR_BGR2RGB)),
    "8UC3": Encoding(3, "u1", _cvt(cv2.COLOR_BGR2RGB)),
    "rgba8": Encoding(4, "u1", _cvt(cv2.COLOR_RGBA2RGB)),
    "bgra8": Encoding(4, "u1", _cvt(cv2.COLOR_BGRA2RGB)),
    "mono8": Encoding(1, "u1", _gray),
    "8UC1": Encoding(1, "u1", _gray),
    "mono16": Encoding(1, "u2", lambda img: _gray(_to8(img))),
    "16UC1": Encoding(1, "u2", lambda img: _gray(_to8(img))),
    "rgb16": Encoding(3, "u2", _to8),
    "bgr16": Encoding(3, "u2", lambda img: cv2.cvtColor(_to8(img), cv2.COLOR_BGR2RGB)),
    "bayer_rggb8": Encoding(1, "u1", _cvt(cv2.COLOR_BayerBG2RGB)),
    "bayer_bggr8": Encoding(1, "u1", _cvt(cv2.COLOR_BayerRG2RGB)),
    "bayer_gbrg8": Encoding(1, "u1", _cvt(cv2.COLOR_BayerGR2RGB)),
    "bayer_grbg8": Encoding(1, "u1", _cvt(cv2.COLOR_BayerGB2RGB)),
    "yuv422": Encoding(2, "u1", _cvt(cv2.COLOR_YUV2RGB_UYVY)),
    "uyvy": Encoding(2, "u1", _cvt(cv2.COLOR_YUV2RGB_UYVY)),
    "yuv422_yuy2": Encoding(2, "u1", _cvt(cv2.COLOR_YUV2RGB_YUY2)),
    "yuyv": Encoding(2, "u1", _cvt(cv2.COLOR_YUV2RGB_YUY2)),
}


def decode_raw(data: Union[bytes, bytearray, memoryview, np.ndarray], height: int, width: int,
               encoding: str, step: int = 0, is_bigendian: bool = False, max_pixels: int = 0) -> np.ndarray:
    """Decode a `sensor_msgs/Image` buffer (honouring `step` row padding and endianness) to RGB uint8;
    more than `max_pixels` (0 = no limit) raises ImageTooLarge before any copy is made."""
    enc = ENCODINGS.get(encoding)
    if enc is None:
        raise ImageError(f"unsupported image encoding '{encoding}'; supported: {', '.join(sorted(ENCODINGS))}")
    if height <= 0 or width <= 0:
        raise ImageError(f"image has no pixels ({width}x{height})")
    check_pixels(width, height, max_pixels, f"{encoding} image")
    dtype = np.dtype(enc.dtype).newbyteorder(">" if is_bigendian else "<")
    row_bytes = width * enc.channels * dtype.itemsize
    step = step or row_bytes
    if step < row_bytes:
        raise ImageError(f"step {step} is smaller than one row ({row_bytes} bytes for {width} px {encoding})")
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size < step * (height - 1) + row_bytes:
        raise ImageError(f"image buffer holds {buf.size} bytes, {encoding} {width}x{height} with step "
                         f"{step} needs {step * (height - 1) + row_bytes}")
    rows = np.lib.stride_tricks.as_strided(buf, shape=(height, row_bytes), strides=(step, 1))
    img = np.ascontiguousarray(rows).view(dtype).astype(dtype.newbyteorder("="))
    img = img.reshape(height, width, enc.channels)
    if enc.channels == 1:
        img = img[:, :, 0]
    try:
        return np.ascontiguousarray(enc.to_rgb(img), dtype=np.uint8)
    except cv2.error as exc:  # e.g. odd width for packed YUV, too small for Bayer demosaicing
        raise ImageError(f"cannot convert {width}x{height} {encoding} to RGB: {exc.err or exc}") from None


def decode_compressed(data: Union[bytes, bytearray, memoryview, np.ndarray], max_pixels: int = 0) -> np.ndarray:
    """Decode JPEG/PNG/... bytes (a `sensor_msgs/CompressedImage` payload or a file) to RGB uint8.
    With `max_pixels` (0 = no limit) the size is read from the header first and a larger image raises
    ImageTooLarge undecoded (a few bytes can claim gigapixels); OpenCV failures raise OpenCVError."""
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size == 0:
        raise ImageError("compressed image is empty")
    if max_pixels:
        size = compressed_size(buf)
        if size is None:
            raise ImageError(f"compressed image ({buf.size} bytes, starting {buf[:4].tobytes()!r}) could not be "
                             f"decoded: its size cannot be read before decoding (JPEG, PNG and BMP headers are read; "
                             f"set node.max_image_pixels: 0 to decode any format OpenCV knows)")
        check_pixels(*size, max_pixels, "compressed image")
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise OpenCVError(f"OpenCV could not decode the compressed image ({buf.size} bytes): "
                          f"{(exc.err or str(exc)).strip()}") from None
    if img is None:
        raise ImageError(f"compressed image ({buf.size} bytes) could not be decoded: corrupt or unknown format")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def load_image(path: Union[str, Path]) -> np.ndarray:
    """Read an image file to RGB uint8; a missing, truncated or corrupt file raises ImageError."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read image {path}: {exc.strerror}") from None
    try:
        return decode_compressed(data)
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from None


def iter_image_batches(paths: Sequence[Union[str, Path]], batch_size: int
                       ) -> Iterator[Tuple[List[np.ndarray], List[ImageError]]]:
    """Read image files `batch_size` at a time; unreadable files come back as errors beside the batch
    (to be counted and logged by the caller) instead of ending the whole run."""
    for i in range(0, len(paths), max(1, batch_size)):
        images, errors = [], []
        for p in paths[i:i + max(1, batch_size)]:
            try:
                images.append(load_image(p))
            except ImageError as exc:
                errors.append(exc)
        yield images, errors


def encode_raw(rgb: np.ndarray, encoding: str = "rgb8") -> tuple[bytes, int]:
    """RGB uint8 -> (bytes, step) for rgb8/bgr8/mono8: what a camera driver would publish."""
    if encoding == "rgb8":
        out = rgb
    elif encoding == "bgr8":
        out = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    elif encoding == "mono8":
        out = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    else:
        raise ImageError(f"encode_raw supports rgb8, bgr8, mono8; not '{encoding}'")
    out = np.ascontiguousarray(out)
    return out.tobytes(), out.shape[1] * (out.shape[2] if out.ndim == 3 else 1)


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ImageError("JPEG encoding failed")
    return buf.tobytes()


def validate_rgb(img: Optional[np.ndarray]) -> np.ndarray:
    """Check an in-memory image is HxWx3 uint8 before it reaches the model."""
    if img is None or not isinstance(img, np.ndarray):
        raise ImageError("image is not a numpy array")
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8 or min(img.shape[:2]) < 1:
        raise ImageError(f"expected an HxWx3 uint8 RGB image, got shape {img.shape} dtype {img.dtype}")
    return img
