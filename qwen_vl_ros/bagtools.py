"""Synthetic camera recordings: rosbag2 bags (sqlite3 or mcap) written with ``rosbags``, no ROS.

What the replay tests, the bag annotation tests and ``make demo`` record:

    from qwen_vl_ros.bagtools import write_camera_bag
    info = write_camera_bag('out/cam', frames=30, fps=10, encoding='jpeg', storage='mcap')
    info.topic, info.msgtype, info.stamps_ns      # what was written

Frames are moving shapes on a gradient (``moving_shapes``): a red disc circling, a green square
sliding, a blue triangle bouncing, and the frame number, so that consecutive frames differ.
Encodings: ``rgb8`` and ``bgr8`` (sensor_msgs/Image on ``/camera/image_raw``), ``jpeg`` and
``png`` (sensor_msgs/CompressedImage on ``/camera/image_raw/compressed``).

Each message is written at its bag time (the receive time of a real recording); its header stamp
is the bag time plus ``stamp_offset_ns`` (a real camera stamps a frame before it is received, so
a test can tell stamps and bag times apart). ``write_bag`` writes any list of messages, e.g.
hand-made broken frames.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

STORAGES = ('sqlite3', 'mcap')
RAW_ENCODINGS = ('rgb8', 'bgr8')
COMPRESSED_FORMATS = ('jpeg', 'png')
ENCODINGS = RAW_ENCODINGS + COMPRESSED_FORMATS
IMAGE = 'sensor_msgs/msg/Image'
COMPRESSED_IMAGE = 'sensor_msgs/msg/CompressedImage'
DEFAULT_TOPIC = '/camera/image_raw'


def typestore():
    """Return the rosbags type store the bags are written with (Humble's: the robots')."""
    from rosbags.typesys import Stores, get_typestore
    return get_typestore(Stores.ROS2_HUMBLE)


def moving_shapes(index: int, width: int = 320, height: int = 240, fps: float = 10.0):
    """Frame ``index`` of a synthetic camera: HxWx3 uint8 RGB with shapes that move over time."""
    t = index / fps
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([40 + 60 * x / width, 40 + 60 * y / height,
                    np.full_like(x, 90)], axis=-1).astype(np.uint8)
    img = np.ascontiguousarray(img)
    r = min(width, height) // 8
    cx = int(width / 2 + width / 3 * np.cos(2 * np.pi * t / 4))
    cy = int(height / 2 + height / 3 * np.sin(2 * np.pi * t / 4))
    cv2.circle(img, (cx, cy), r, (230, 40, 40), -1)                    # red disc, circling
    sx = int((t * width / 3) % (width + 2 * r)) - 2 * r
    cv2.rectangle(img, (sx, height // 6), (sx + 2 * r, height // 6 + 2 * r), (40, 210, 60), -1)
    ty = int(abs((t * height / 2) % (2 * height) - height))            # blue triangle, bouncing
    ty = min(max(ty, r), height - r)
    tri = np.array([[width // 6, ty - r], [width // 6 - r, ty + r], [width // 6 + r, ty + r]])
    cv2.fillPoly(img, [tri.astype(np.int32)], (50, 60, 230))
    cv2.putText(img, f'{index:04d}', (width - 70, height - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                (255, 255, 255), 2)
    return img


def _header(store, stamp_ns: int, frame_id: str):
    Header = store.types['std_msgs/msg/Header']
    Time = store.types['builtin_interfaces/msg/Time']
    return Header(stamp=Time(sec=int(stamp_ns // 1_000_000_000),
                             nanosec=int(stamp_ns % 1_000_000_000)), frame_id=frame_id)


def image_message(store, rgb: np.ndarray, stamp_ns: int, frame_id: str = 'camera',
                  encoding: str = 'rgb8'):
    """Build a rosbags sensor_msgs/msg/Image of an RGB array in ``rgb8`` or ``bgr8``."""
    if encoding not in RAW_ENCODINGS:
        raise ValueError(f'encoding must be one of {RAW_ENCODINGS}, got {encoding!r}')
    px = rgb if encoding == 'rgb8' else rgb[..., ::-1]
    h, w = rgb.shape[:2]
    return store.types[IMAGE](
        header=_header(store, stamp_ns, frame_id), height=h, width=w, encoding=encoding,
        is_bigendian=0, step=w * 3, data=np.ascontiguousarray(px).reshape(-1))


def compressed_message(store, rgb: np.ndarray | None, stamp_ns: int, frame_id: str = 'camera',
                       fmt: str = 'jpeg', data: bytes | None = None):
    """Build a rosbags sensor_msgs/msg/CompressedImage of ``rgb`` (JPEG / PNG) or ``data``."""
    if data is None:
        ok, buf = cv2.imencode('.jpg' if fmt == 'jpeg' else '.png',
                               cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if not ok:
            raise ValueError(f'OpenCV could not encode a {fmt} image')
        data = buf.tobytes()
    return store.types[COMPRESSED_IMAGE](header=_header(store, stamp_ns, frame_id), format=fmt,
                                         data=np.frombuffer(data, np.uint8))


@dataclass
class BagInfo:
    """What write_camera_bag wrote."""

    path: Path
    topic: str
    msgtype: str
    storage: str
    bag_times_ns: list = field(default_factory=list)   # log time of each message
    stamps_ns: list = field(default_factory=list)      # header stamp of each message

    @property
    def duration_s(self) -> float:
        return (self.bag_times_ns[-1] - self.bag_times_ns[0]) / 1e9 if self.bag_times_ns else 0.0


def write_bag(path, messages, storage: str = 'sqlite3', store=None) -> Path:
    """Write ``messages`` = [(topic, msgtype, bag_time_ns, rosbags message), ...] to a new bag.

    ``path`` is the bag directory; it must not exist yet (rosbags refuses to overwrite).
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    if storage not in STORAGES:
        raise ValueError(f'storage must be one of {STORAGES}, got {storage!r}')
    store = store or typestore()
    path = Path(path)
    plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
    connections = {}
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        for topic, msgtype, bag_ns, msg in messages:
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=store)
            writer.write(connections[topic], int(bag_ns), store.serialize_cdr(msg, msgtype))
    return path


def write_camera_bag(path, frames: int = 30, fps: float = 10.0, width: int = 320,
                     height: int = 240, encoding: str = 'rgb8', storage: str = 'sqlite3',
                     topic: str | None = None, frame_id: str = 'camera',
                     start_ns: int | None = None, stamp_offset_ns: int = -20_000_000) -> BagInfo:
    """Record ``frames`` synthetic camera frames at ``fps`` into a new bag at ``path``.

    ``start_ns``: bag time of the first frame (default: now, as if just recorded). ``topic``
    defaults to /camera/image_raw (raw) or /camera/image_raw/compressed (jpeg, png).
    """
    if encoding not in ENCODINGS:
        raise ValueError(f'encoding must be one of {ENCODINGS}, got {encoding!r}')
    if frames < 1 or fps <= 0:
        raise ValueError('need frames >= 1 and fps > 0')
    store = typestore()
    compressed = encoding in COMPRESSED_FORMATS
    msgtype = COMPRESSED_IMAGE if compressed else IMAGE
    topic = topic or (DEFAULT_TOPIC + '/compressed' if compressed else DEFAULT_TOPIC)
    start_ns = time.time_ns() if start_ns is None else int(start_ns)
    info = BagInfo(Path(path), topic, msgtype, storage)
    messages = []
    for i in range(frames):
        bag_ns = start_ns + int(round(i * 1e9 / fps))
        stamp_ns = bag_ns + stamp_offset_ns
        rgb = moving_shapes(i, width, height, fps)
        if compressed:
            msg = compressed_message(store, rgb, stamp_ns, frame_id, encoding)
        else:
            msg = image_message(store, rgb, stamp_ns, frame_id, encoding)
        messages.append((topic, msgtype, bag_ns, msg))
        info.bag_times_ns.append(bag_ns)
        info.stamps_ns.append(stamp_ns)
    write_bag(path, messages, storage, store)
    return info
