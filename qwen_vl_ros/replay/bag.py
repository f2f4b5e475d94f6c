"""The input side: which recorded topics to play, under which names, with which message class."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path


class ReplayError(Exception):
    """Something the user can fix: a missing bag, an unknown topic or type, a time-out."""


class ReplayTimeout(ReplayError):
    """The graph did not become ready (subscribers, publishers, model) in time."""


def message_class(msgtype: str):
    """Return the rclpy class of 'pkg/msg/Name' (or 'pkg/Name'); ReplayError if missing."""
    parts = msgtype.split('/')
    if len(parts) == 2:
        parts = [parts[0], 'msg', parts[1]]
    if len(parts) != 3 or not all(parts):
        raise ReplayError(f'not a message type name: {msgtype!r} (expected pkg/msg/Name)')
    pkg, kind, name = parts
    try:
        module = importlib.import_module(f'{pkg}.{kind}')
        return getattr(module, name)
    except (ImportError, AttributeError) as e:
        raise ReplayError(f'message type {msgtype} is not installed in this Python '
                          f'({type(e).__name__}: {e})') from None


def parse_remaps(remaps) -> dict:
    """['FROM:=TO', ...] -> {FROM: TO}; names as they are (absolute names match bag topics)."""
    out = {}
    for item in remaps or ():
        src, sep, dst = item.partition(':=')
        if not sep or not src or not dst:
            raise ReplayError(f'--remap takes FROM:=TO, got {item!r}')
        out[src] = dst
    return out


def parse_record(items) -> list:
    """['TOPIC', 'TOPIC:pkg/msg/Type', ...] -> [(topic, type or None), ...]."""
    out = []
    for item in items or ():
        topic, _, msgtype = item.partition(':')
        if not topic:
            raise ReplayError(f'--record takes TOPIC or TOPIC:pkg/msg/Type, got {item!r}')
        out.append((topic, msgtype or None))
    return out


@dataclass
class PlayedTopic:
    """One recorded topic to play: its connections in the bag and where it goes."""

    bag_topic: str
    topic: str          # after remapping
    msgtype: str
    connections: list
    count: int


def open_reader(path):
    """Open a rosbags AnyReader on a rosbag2 directory (sqlite3 or mcap) or its storage file."""
    from rosbags.highlevel import AnyReader
    p = Path(path)
    if p.is_file() and p.suffix in ('.db3', '.mcap'):
        p = p.parent      # the storage file of a rosbag2: its directory has metadata.yaml
    if not p.exists():
        raise ReplayError(f'no bag at {str(path)!r}')
    try:
        reader = AnyReader([p])
        reader.open()
    except Exception as e:  # rosbags raises several unrelated error classes
        raise ReplayError(f'cannot read the bag {str(p)!r}: {type(e).__name__}: {e}') from None
    if not getattr(reader, 'is2', True):
        reader.close()
        raise ReplayError(f'{str(p)!r} is a ROS 1 bag: its messages are not CDR; convert it '
                          'first (rosbags-convert --src BAG.bag --dst DIR)')
    return reader


def select_topics(reader, topics, remaps: dict) -> list:
    """PlayedTopic for each requested topic (all topics when ``topics`` is empty)."""
    by_topic: dict[str, list] = {}
    for c in reader.connections:
        by_topic.setdefault(c.topic, []).append(c)
    wanted = list(topics) if topics else sorted(by_topic)
    missing = [t for t in wanted if t not in by_topic]
    if missing:
        have = ', '.join(f'{t} ({by_topic[t][0].msgtype})' for t in sorted(by_topic)) or 'none'
        raise ReplayError(f'topic(s) {", ".join(missing)} not in the bag; it has: {have}')
    out = []
    for t in wanted:
        conns = by_topic[t]
        types = {c.msgtype for c in conns}
        if len(types) != 1:
            raise ReplayError(f'topic {t} has several types in the bag: {sorted(types)}')
        out.append(PlayedTopic(t, remaps.get(t, t), types.pop(), conns,
                               sum(c.msgcount for c in conns)))
    return out
