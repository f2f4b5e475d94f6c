"""The newest frame of the image topic, the ring buffer of video mode, and what to describe.

Messages are stored as received (no conversion in the subscription callback); the worker thread
converts them when they are described.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from typing import Any

from ..image_msg import compressed_to_rgb, image_to_rgb
from ..vlm.errors import ImageError


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

    @property
    def time_ns(self) -> int:
        """The frame's time: its header stamp, or its arrival time when the stamp is zero."""
        st = self.msg.header.stamp
        ns = st.sec * 1_000_000_000 + st.nanosec
        if ns == 0 and self.received is not None:
            return int(self.received.nanoseconds)
        return ns

    def cache_key(self, topic: str):
        """Name of this frame for the core's vision cache, or None for a request image.

        A topic frame is known by topic, header stamp and frame_id (a zero stamp: by its
        arrival number); a request image by its bytes, which the core digests itself.
        """
        if not self.from_topic:
            return None
        st = self.msg.header.stamp
        when = (st.sec, st.nanosec) if (st.sec or st.nanosec) else ('arrival', self.seq)
        return (topic, when, self.msg.header.frame_id)

    def to_rgb(self, max_pixels: int, bit_depth: int = 0):
        """HxWx3 uint8 RGB; raises ImageError with the reason (bit_depth: image_msg.to_8bit)."""
        if self.compressed:
            return compressed_to_rgb(self.msg, max_pixels or None, bit_depth)
        return image_to_rgb(self.msg, max_pixels or None, bit_depth)


def convert_all(sources: list, max_pixels: int, on_bad=None, bit_depth: int = 0) -> list:
    """Convert every source to RGB, in order (16-bit data by ``bit_depth``: image_msg.to_8bit).

    A frame that cannot be converted raises ImageError; for a video the message names the frame
    (its place and stamp), and ``on_bad(source)`` hears which one it was.
    """
    frames = []
    for i, source in enumerate(sources):
        try:
            frames.append(source.to_rgb(max_pixels, bit_depth))
        except ImageError as e:
            if on_bad is not None:
                on_bad(source)
            if len(sources) == 1:
                raise
            st = source.header.stamp
            raise ImageError(f'video frame {i + 1} of {len(sources)} '
                             f'(stamp {st.sec}.{st.nanosec:09d}): {e}') from e
    return frames


def mean_spacing_s(sources: list) -> float:
    """Mean time in seconds between consecutive frames (by stamp; 0.0 for fewer than two)."""
    if len(sources) < 2:
        return 0.0
    return (sources[-1].time_ns - sources[0].time_ns) / (len(sources) - 1) * 1e-9


def second_per_grid_t(sources: list, temporal: int = 2) -> float | None:
    """Seconds one temporal group of a video spans: ``temporal`` x the frames' mean spacing.

    Measured from the stamps, not taken as 2 x video_interval_s: the ring keeps frames *at
    least* video_interval_s apart, so a slower camera, dropped frames or stamp jitter make the
    real spacing larger, and Qwen2.5-VL's temporal rope positions stand for real time (its
    absolute time encoding; transformers' processor likewise uses temporal_patch_size / fps).
    Rounded to 10 ms: the core truncates temporal positions to integers, and without rounding
    a spacing of 0.4999 s would give a step of 1 where 0.5 s gives 2. None (= the core's
    default) when the stamps give no spacing.
    """
    spacing = mean_spacing_s(sources)
    value = round(temporal * spacing, 2)
    return value if value > 0 else None


class FrameStore:
    """The newest frame, and in video mode a ring buffer of the last frames kept.

    A frame enters the ring when its time (header stamp; arrival time for a zero stamp) is at
    least ``interval_s`` after the last frame kept. The ring starts again when time goes
    backwards (a bag played again, a clock reset) or jumps forward by more than ``max_gap_s``
    (the stream was interrupted: such a video would join two unrelated scenes). The
    subscription callback never waits on anything but this store's lock.
    """

    def __init__(self, compressed: bool, video_frames: int = 0, interval_s: float = 0.0,
                 max_gap_s: float = 0.0):
        self._compressed = compressed
        self._lock = threading.Lock()
        self._newest: Source | None = None
        self._seq = 0
        self.described_seq = 0    # the newest frame already handed to the worker
        self._ring: collections.deque = collections.deque()
        self._video_frames = 0
        self._interval_ns = 0
        self._max_gap_ns = 0
        self.configure_video(video_frames, interval_s, max_gap_s)

    def configure_video(self, video_frames: int, interval_s: float, max_gap_s: float) -> None:
        """Set the ring's length (0 = image mode: no ring), spacing and interruption gap.

        Frames already kept stay (the newest ``video_frames`` of them).
        """
        with self._lock:
            self._video_frames = int(video_frames)
            self._ring = collections.deque(self._ring if video_frames else (),
                                           maxlen=max(1, self._video_frames))
            self._interval_ns = int(round(interval_s * 1e9))
            self._max_gap_ns = int(round(max_gap_s * 1e9))

    def put(self, msg, received) -> None:
        with self._lock:
            self._seq += 1
            source = Source(msg, self._compressed, True, self._seq, received)
            self._newest = source
            if self._video_frames:
                self._keep(source)

    def _keep(self, source: Source) -> None:
        ring = self._ring
        if ring:
            gap = source.time_ns - ring[-1].time_ns
            if gap < 0 or (self._max_gap_ns and gap > self._max_gap_ns):
                ring.clear()
            elif gap < self._interval_ns:
                return
        ring.append(source)

    def newest(self) -> Source | None:
        with self._lock:
            return self._newest

    def fresh(self) -> Source | None:
        """Return the newest frame if it has not been handed to the worker yet, else None."""
        with self._lock:
            if self._newest is None or self._newest.seq == self.described_seq:
                return None
            return self._newest

    def video(self) -> tuple[int, list]:
        """(video_frames, the frames kept, oldest first); video_frames 0 = image mode.

        The list may be shorter than video_frames while the ring is filling.
        """
        with self._lock:
            return self._video_frames, list(self._ring)

    def is_new(self, source: Source) -> bool:
        """Tell whether ``source`` came after the last frame handed to the worker."""
        with self._lock:
            return source.seq > self.described_seq

    def mark_described(self, source: Source) -> None:
        with self._lock:
            self.described_seq = max(self.described_seq, source.seq)

    def discard(self, source: Source) -> None:
        """Drop a frame from the ring (it cannot be converted: it would spoil every video)."""
        with self._lock:
            kept = [s for s in self._ring if s.seq != source.seq]
            if len(kept) != len(self._ring):
                self._ring = collections.deque(kept, maxlen=self._ring.maxlen)
