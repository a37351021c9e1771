"""Depth images from raw buffers (a `sensor_msgs/Image` on the depth topic), for metric loop poses.

Kept apart from `vpr_core.images` (which turns everything into RGB): depth must keep its values.
The pose code reads float metres and uint16 millimetres alike, so both come back unconverted.
"""
from __future__ import annotations

from typing import Dict, Union

import numpy as np

from vpr_core.images import ImageError

# ROS depth encoding -> numpy dtype of one pixel (little-endian form): REP 118
DEPTH_ENCODINGS: Dict[str, str] = {
    "32FC1": "f4",  # metres; NaN / 0 = no reading
    "16UC1": "u2",  # millimetres; 0 = no reading
    "mono16": "u2",  # some drivers label millimetre depth so
}


def decode_depth(data: Union[bytes, bytearray, memoryview, np.ndarray], height: int, width: int,
                 encoding: str, step: int = 0, is_bigendian: bool = False) -> np.ndarray:
    """HxW depth (float32 metres or uint16 millimetres) from a raw buffer, honouring `step` and endianness."""
    code = DEPTH_ENCODINGS.get(encoding)
    if code is None:
        raise ImageError(f"unsupported depth encoding '{encoding}'; publish one of {sorted(DEPTH_ENCODINGS)} "
                         f"(32FC1 in metres or 16UC1 in millimetres, REP 118)")
    if height <= 0 or width <= 0:
        raise ImageError(f"depth image has no pixels ({width}x{height})")
    dtype = np.dtype(code).newbyteorder(">" if is_bigendian else "<")
    row_bytes = width * dtype.itemsize
    step = step or row_bytes
    buf = np.frombuffer(data, dtype=np.uint8)
    if step < row_bytes or buf.size < step * (height - 1) + row_bytes:
        raise ImageError(f"depth buffer of {buf.size} bytes with step {step} cannot hold {width}x{height} "
                         f"{encoding} ({row_bytes} bytes per row)")
    rows = np.ndarray((height, width), dtype=dtype, buffer=buf, strides=(step, dtype.itemsize))
    return rows.astype(dtype.newbyteorder("="))  # a native-order copy: the message buffer may go away
