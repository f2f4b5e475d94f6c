"""The newest frame of the image topic, and where an image to describe comes from."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from ..image_msg import compressed_to_rgb, image_to_rgb


@dataclass(frozen=True)
class Source:
    """An image message to describe: kept as received, converted on the worker thread."""

    msg: Any
    compressed: bool
    from_topic: bool
    seq: int = 0            # topic frames: arrival number (0 = a request image)
    received: Any = None    # topic frames: rclpy Time of arrival

    @property
    def header(self):
        return self.msg.header

    def to_rgb(self, max_pixels: int):
        """HxWx3 uint8 RGB; raises ImageError with the reason."""
        if self.compressed:
            return compressed_to_rgb(self.msg, max_pixels or None)
        return image_to_rgb(self.msg, max_pixels or None)


class FrameStore:
    """Holds only the newest frame; the subscription callback never waits on anything else."""

    def __init__(self, compressed: bool):
        self._compressed = compressed
        self._lock = threading.Lock()
        self._newest: Source | None = None
        self._seq = 0
        self.described_seq = 0    # the newest frame already handed to the worker

    def put(self, msg, received) -> None:
        with self._lock:
            self._seq += 1
            self._newest = Source(msg, self._compressed, True, self._seq, received)

    def newest(self) -> Source | None:
        with self._lock:
            return self._newest

    def fresh(self) -> Source | None:
        """Return the newest frame if it has not been handed to the worker yet, else None."""
        with self._lock:
            if self._newest is None or self._newest.seq == self.described_seq:
                return None
            return self._newest

    def mark_described(self, source: Source) -> None:
        with self._lock:
            self.described_seq = max(self.described_seq, source.seq)
