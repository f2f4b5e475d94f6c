"""The output side: raw messages received during a replay -> JSONL lines or a rosbag2.

JSONL: one object per message, in the order received:

    {"topic": "/qwen_vl/description/stamped", "type": "qwen_vl_interfaces/msg/Description",
     "recv_ns": 1718000000123456789, "bag_ns": 1717990000100000000, "msg": {"header": ...}}

``recv_ns`` is the wall-clock receive time (ns since the epoch); ``bag_ns`` the recording time
that the replay had reached at that moment (null before the first message was played). ``msg``
holds every field of the message, nested messages as objects; uint8 / byte arrays are base64
strings, a single byte field a number, non-finite floats null.

A rosbag2 output (a directory; sqlite3 or mcap) holds the raw messages at their receive times,
with message definitions from the installed .msg files (so custom types such as
qwen_vl_interfaces/msg/Description are readable by rosbags and ros2 bag).
"""

from __future__ import annotations

import array
import base64
import json
import math
import sys
from pathlib import Path

from .bag import ReplayError


def to_jsonable(value):
    """Convert a ROS message (or a field value) to plain JSON data."""
    if hasattr(value, 'get_fields_and_field_types'):
        return {name: to_jsonable(getattr(value, name))
                for name in value.get_fields_and_field_types()}
    if isinstance(value, bytes) and len(value) == 1:
        return value[0]  # a byte (octet) field, e.g. DiagnosticStatus.level
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode('ascii')
    if isinstance(value, array.array):
        if value.typecode in ('B', 'b'):
            return base64.b64encode(value.tobytes()).decode('ascii')
        return [to_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, bytes) and len(v) == 1 for v in value):
            return base64.b64encode(b''.join(value)).decode('ascii')
        return [to_jsonable(v) for v in value]
    if hasattr(value, 'tolist'):  # numpy arrays and scalars
        if getattr(value, 'dtype', None) is not None and value.dtype.kind == 'u' \
                and value.dtype.itemsize == 1 and getattr(value, 'ndim', 0) == 1:
            return base64.b64encode(value.tobytes()).decode('ascii')
        return to_jsonable(value.tolist())
    return value


class JsonlSink:
    """Writes each received message as one JSON line (a file, or stdout for '-')."""

    def __init__(self, path: str, classes: dict):
        self.path = path
        self._classes = classes          # topic -> rclpy message class
        self._file = sys.stdout if path == '-' else open(path, 'w', encoding='utf-8')

    def write(self, topic: str, msgtype: str, recv_ns: int, bag_ns, raw: bytes) -> None:
        from rclpy.serialization import deserialize_message
        msg = deserialize_message(raw, self._classes[topic])
        line = {'topic': topic, 'type': msgtype, 'recv_ns': recv_ns, 'bag_ns': bag_ns,
                'msg': to_jsonable(msg)}
        self._file.write(json.dumps(line, ensure_ascii=False) + '\n')
        self._file.flush()

    def close(self) -> None:
        if self._file is not sys.stdout:
            self._file.close()


class BagSink:
    """Writes the raw messages into a new rosbag2 directory with rosbags' Writer."""

    def __init__(self, path: str, topics: dict, storage: str = 'sqlite3'):
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore
        self.path = Path(path)
        if self.path.exists():
            raise ReplayError(f'--out {path}: the output bag directory exists already')
        store = get_typestore(Stores.LATEST)
        for msgtype in set(topics.values()):
            register_type(store, msgtype)
        plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
        self._writer = Writer(self.path, version=9, storage_plugin=plugin)
        self._writer.open()
        self._connections = {t: self._writer.add_connection(t, m, typestore=store)
                             for t, m in topics.items()}

    def write(self, topic: str, msgtype: str, recv_ns: int, bag_ns, raw: bytes) -> None:
        self._writer.write(self._connections[topic], recv_ns, raw)

    def close(self) -> None:
        self._writer.close()


def register_type(store, msgtype: str) -> None:
    """Make ``msgtype`` and every type it uses known to a rosbags type store.

    Types the store does not ship are read from the installed .msg files
    (<prefix>/share/<pkg>/msg/<Name>.msg, found through the ament index).
    """
    from rosbags.typesys import get_types_from_msg
    pending, seen = [msgtype], set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        if name not in store.fielddefs:
            store.register(get_types_from_msg(_msg_file(name).read_text(), name))
        _, fields = store.fielddefs[name]
        for _, desc in fields:
            pending.extend(_type_names(desc))


def _type_names(desc):
    """Message type names inside a rosbags field description (nested tuples)."""
    if isinstance(desc, str):
        return [desc] if desc.count('/') == 2 else []
    if isinstance(desc, tuple):
        return [n for d in desc for n in _type_names(d)]
    return []


def _msg_file(msgtype: str) -> Path:
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    pkg, _, name = msgtype.split('/')
    try:
        path = Path(get_package_share_directory(pkg)) / 'msg' / f'{name}.msg'
    except (PackageNotFoundError, LookupError, ValueError) as e:
        raise ReplayError(f'cannot find the definition of {msgtype} to write a bag: {e} '
                          '(is AMENT_PREFIX_PATH set?)') from None
    if not path.is_file():
        raise ReplayError(f'cannot find the definition of {msgtype}: no {path}')
    return path


def make_sink(out: str, topics: dict, storage: str):
    """JSONL for '-' or a name ending in .jsonl / .json; otherwise a bag directory."""
    if out == '-' or out.endswith(('.jsonl', '.json')):
        from .bag import message_class
        return JsonlSink(out, {t: message_class(m) for t, m in topics.items()})
    return BagSink(out, topics, storage)
