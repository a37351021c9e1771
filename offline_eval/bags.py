"""Datasets as rosbag2 (MCAP) camera streams: what a robot would have recorded, replayable into
the real node. Images are stored raw (rgb8), decoded once from the dataset files, so the node
sees exactly the pixels the direct path sees."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, List, Sequence, Tuple

import numpy as np

from rclpy.serialization import deserialize_message, serialize_message
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import Image
from tqdm import tqdm

from vpr_core.images import load_image
from vpr_ros.conversions import rgb_to_image

IMAGE_TYPE = "sensor_msgs/msg/Image"


def write_image_bag_frames(frames: Sequence[Callable[[], np.ndarray]], stamps: Sequence[int], bag_dir: Path,
                           topic: str = "/camera/image", frame_id: str = "camera", progress: bool = True) -> Path:
    """Write RGB frames (loaded lazily) as a rosbag2 MCAP bag; header stamp = bag time."""
    if len(frames) != len(stamps):
        raise ValueError("one stamp per frame is needed")
    bag_dir = Path(bag_dir)
    with Writer(bag_dir, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection(topic, IMAGE_TYPE, typestore=get_typestore(Stores.ROS2_KILTED))
        for frame, stamp in tqdm(list(zip(frames, stamps)), desc=f"bag {bag_dir.name}", disable=not progress):
            writer.write(conn, int(stamp), serialize_message(rgb_to_image(frame(), int(stamp), frame_id)))
    return bag_dir


def write_image_bag(paths: Sequence[Path], stamps: Sequence[int], bag_dir: Path, **kwargs) -> Path:
    """Write image files as a bag (see write_image_bag_frames)."""
    return write_image_bag_frames([lambda p=p: load_image(p) for p in paths], stamps, bag_dir, **kwargs)


def read_image_bag(bag_dir: Path, topic: str | None = None) -> Iterator[Tuple[int, Image]]:
    """(bag timestamp ns, Image) in time order."""
    with Reader(bag_dir) as reader:
        conns = [c for c in reader.connections if c.msgtype == IMAGE_TYPE and (topic is None or c.topic == topic)]
        if not conns:
            raise ValueError(f"{bag_dir}: no {IMAGE_TYPE} topic{f' named {topic}' if topic else ''}")
        for conn, stamp, raw in reader.messages(connections=conns):
            yield stamp, deserialize_message(bytes(raw), Image)


def bag_topics(bag_dir: Path) -> List[Tuple[str, str, int]]:
    with Reader(bag_dir) as reader:
        return [(c.topic, c.msgtype, c.msgcount) for c in reader.connections]
