"""Frames the middleware lost on the image topic: notice it, say it, count it (issue 9).

Large raw frames over a best_effort subscription are lost on loopback with Fast DDS (a frame is
hundreds of UDP fragments; one missing fragment drops the frame; README, "What reaches the
node"). The node hears about it in two ways, both handled here without rclpy:

- the rmw's MESSAGE_LOST event (rmw_message_lost_status_t: total_count_change), where the rmw
  reports it (Fast DDS does; others may not: then only the second way works);
- a publisher that is there while nothing arrives (no frame for ``quiet_s`` seconds), with the
  publishers' reliability from the ROS graph to say what to change.

``InflowWatch`` turns both into warning texts (the node throttles and logs them) and counts
lost frames; it records the size of the last frame received, since the size decides.
"""

from __future__ import annotations

import threading

QUIET_S = 5.0


def frame_size(msg) -> str:
    """'640x480 rgb8, 0.92 MB' for an Image, 'jpeg, 0.05 MB' for a CompressedImage."""
    nbytes = len(msg.data)
    if hasattr(msg, 'width'):
        return f'{msg.width}x{msg.height} {msg.encoding}, {nbytes / 1e6:.2f} MB'
    return f'{msg.format or "compressed"}, {nbytes / 1e6:.2f} MB'


class InflowWatch:
    """What arrives on the image topic versus what the middleware says it lost."""

    def __init__(self, topic: str, reliability: str, transport: str, quiet_s: float = QUIET_S):
        self.topic = topic
        self.reliability = reliability    # of our subscription: 'reliable' or 'best_effort'
        self.transport = transport        # 'raw' or 'compressed'
        self.quiet_s = quiet_s
        self._lock = threading.Lock()
        self.lost = 0
        self.last_size = ''
        self._last_frame_s: float | None = None
        self._publishers_since: float | None = None

    def on_frame(self, msg, now_s: float) -> None:
        """Record a frame (cheap: the subscription callback calls it)."""
        with self._lock:
            self._last_frame_s = now_s
            self.last_size = frame_size(msg)

    def _advice(self) -> str:
        if self.reliability == 'best_effort':
            advice = ('set image_reliability: reliable (the publisher must be reliable, as '
                      'image_transport publishers are)')
        else:
            advice = 'lower the camera rate or resolution'
        if self.transport == 'raw':
            advice += ', or subscribe the compressed stream (image_transport: compressed)'
        return advice

    def on_lost(self, total_count_change: int) -> str | None:
        """Count a MESSAGE_LOST event; return the warning to log (None if nothing new)."""
        change = int(total_count_change)
        if change <= 0:
            return None
        with self._lock:
            self.lost += change
            lost, size = self.lost, self.last_size
        got = f'last frame received: {size}' if size else 'no frame received yet'
        return (f'{change} frame(s) lost by the middleware on {self.topic} ({lost} so far; '
                f'{got}; subscription {self.reliability}): large frames over best_effort are '
                f'dropped when any of their fragments is lost; {self._advice()}')

    def hint(self) -> str:
        """Return '' or a clause for "nothing received" replies: frames were lost, and why."""
        with self._lock:
            lost = self.lost
        if not lost:
            return ''
        return f' ({lost} frame(s) lost by the middleware so far: {self._advice()})'

    @staticmethod
    def on_incompatible(topic: str, reliability: str) -> str:
        """Say what a publisher whose QoS cannot match means (REQUESTED_INCOMPATIBLE_QOS)."""
        other = 'best_effort' if reliability == 'reliable' else 'reliable'
        return (f'a publisher on {topic} offers QoS this {reliability} subscription cannot '
                f'take: none of its frames will arrive; set image_reliability: {other} if '
                f'that publisher is {other} (sensor-data QoS is best_effort)')

    def check(self, now_s: float, publishers: list) -> str | None:
        """Return a warning when publishers are there but no frame came for ``quiet_s``.

        ``publishers``: the reliability ('reliable' / 'best_effort') of each publisher on the
        topic (from the ROS graph). None when all is well or nothing can be said yet.
        """
        with self._lock:
            if not publishers:
                self._publishers_since = None
                return None
            if self._publishers_since is None:
                self._publishers_since = now_s
            quiet_from = max(self._publishers_since, self._last_frame_s or self._publishers_since)
            quiet = now_s - quiet_from
            size = self.last_size
        if quiet < self.quiet_s:
            return None
        n = len(publishers)
        offered = ', '.join(sorted(set(publishers)))
        got = f'last frame received: {size}' if size else 'no frame received yet'
        if self.reliability == 'reliable' and 'reliable' not in publishers:
            why = ('the publisher is best_effort and this subscription reliable: they do not '
                   'match; set image_reliability: best_effort')
        elif self.reliability == 'best_effort' and 'reliable' in publishers:
            why = ('frames over best_effort are being lost (large frames are dropped when a '
                   f'fragment is lost); {self._advice()}')
        elif self.reliability == 'best_effort':
            why = ('the publisher sends nothing, or its frames are lost over best_effort; make '
                   'the camera publish reliable and set image_reliability: reliable'
                   + (', or use image_transport: compressed' if self.transport == 'raw'
                      else ''))
        else:
            why = 'the publisher sends nothing (is the camera streaming?)'
        return (f'nothing received on {self.topic} for {quiet:.0f} s although {n} '
                f'publisher(s) ({offered}) are there ({got}): {why}')


def _event_callbacks(**callbacks):
    """Return SubscriptionEventCallbacks (rclpy.event_handler; Humble: rclpy.qos_event)."""
    try:
        from rclpy.event_handler import SubscriptionEventCallbacks
    except ImportError:   # Humble (and Iron, where qos_event still exists)
        try:
            from rclpy.qos_event import SubscriptionEventCallbacks
        except ImportError:
            return None
    return SubscriptionEventCallbacks(**callbacks)


def create_image_subscription(node, msg_type, topic: str, callback, qos, group, on_lost,
                              on_incompatible) -> tuple:
    """Subscribe with the MESSAGE_LOST and REQUESTED_INCOMPATIBLE_QOS events; (sub, lost_events).

    ``lost_events`` is False when the rmw does not support the message-lost event (creating
    the event raises UnsupportedEventTypeError, e.g. on older or non-DDS rmws): the
    subscription is then made without it (and without any event if need be), and the node
    relies on InflowWatch.check alone.
    """
    for callbacks, lost in (({'message_lost': on_lost, 'incompatible_qos': on_incompatible},
                             True),
                            ({'incompatible_qos': on_incompatible}, False)):
        events = _event_callbacks(**callbacks)
        if events is None:
            break
        try:
            return node.create_subscription(msg_type, topic, callback, qos,
                                            callback_group=group, event_callbacks=events), lost
        except Exception as e:  # noqa: BLE001 - UnsupportedEventTypeError's class varies
            if 'unsupported' not in type(e).__name__.lower() and \
                    'not supported' not in str(e).lower():
                raise
    return node.create_subscription(msg_type, topic, callback, qos, callback_group=group), False
