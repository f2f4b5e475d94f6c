"""qwen-vl-replay: play a rosbag2 recording into the ROS graph and record what comes back.

    bag (sqlite3 / mcap, read with rosbags)  --raw CDR, recorded timing / rate-->  ROS topics
    ROS topics (e.g. /qwen_vl/description/stamped)  --raw CDR-->  JSONL file or rosbag2

The messages are never deserialized on the way in: each one is published as the serialized
bytes stored in the bag (``Publisher.publish(bytes)``), with the topic's recorded type, so any
message type that is installed can be played. ``cli.py`` is the command line; ``Replay`` in
``session.py`` is the same thing as a library (the demo uses it in-process).
"""

from .session import Replay, ReplayError, ReplayOptions, ReplaySummary, ReplayTimeout

__all__ = ['Replay', 'ReplayError', 'ReplayOptions', 'ReplaySummary', 'ReplayTimeout']
