"""One replay: wait for the graph, play the bag with its recorded timing, record, settle.

The caller owns rclpy: it initialises it, makes the node and spins the node on another thread
(the recording callbacks run there); ``Replay(node, options).run()`` blocks the calling thread.

    1. open the bag, choose the topics, create one publisher per topic (the recorded type)
    2. find the types of the topics to record and subscribe to them (raw: CDR bytes)
    3. wait, all within ``timeout`` seconds: for ``wait_ready`` the node's /diagnostics state
       'ready' (the model is loaded), for ``wait_subscribers`` subscribers on every played
       topic, and for a publisher on every recorded topic
    4. play: message i goes out at start + (t_i - t_0) / rate, as the bag's raw bytes;
       with ``clock_hz`` the bag time also goes out on /clock (for use_sim_time nodes)
    5. settle: keep recording for ``settle`` seconds after the last message (with ``clock_hz``
       the bag time keeps running, so the node's timers keep ticking), then close
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from .bag import ReplayError, ReplayTimeout, message_class, open_reader, select_topics
from .record import make_sink

# After the publishers have matched, the other side's readers need a moment to match too.
MATCH_GRACE_S = 0.3
DEFAULT_RECORD = ('/qwen_vl/description/stamped',)

__all__ = ['Replay', 'ReplayError', 'ReplayOptions', 'ReplaySummary', 'ReplayTimeout']


@dataclass
class ReplayOptions:
    """What to play and record; see qwen-vl-replay --help for each."""

    bag: str
    topics: list = field(default_factory=list)        # bag topics to play (empty = all)
    rate: float = 1.0
    remaps: dict = field(default_factory=dict)        # bag topic -> published topic
    record: list = field(default_factory=list)        # [(topic, type or None)]
    out: str | None = None                            # .jsonl file, '-', or bag directory
    out_storage: str = 'sqlite3'
    wait_subscribers: int = 1
    wait_ready: bool = False
    timeout: float = 60.0
    settle: float = 2.0
    clock_hz: float = 0.0
    reliability: str = 'reliable'
    depth: int = 10


@dataclass
class ReplaySummary:
    """What happened."""

    played: dict = field(default_factory=dict)       # topic -> messages published
    recorded: dict = field(default_factory=dict)     # topic -> messages received
    bag_duration_s: float = 0.0
    play_s: float = 0.0                              # wall time from first to last message
    max_late_ms: float = 0.0                         # worst publish delay behind schedule
    waited_s: float = 0.0
    interrupted: bool = False

    def lines(self) -> list:
        played = ', '.join(f'{t}: {n}' for t, n in self.played.items()) or 'nothing'
        out = [f'played {sum(self.played.values())} message(s) ({played}) of '
               f'{self.bag_duration_s:.2f} s of recording in {self.play_s:.2f} s '
               f'(worst lateness {self.max_late_ms:.1f} ms)']
        if self.recorded:
            out.append('recorded ' + ', '.join(f'{t}: {n}' for t, n in self.recorded.items()))
        if self.interrupted:
            out.append('interrupted: the recording is incomplete')
        return out


class Replay:
    """Plays ``options.bag`` through ``node`` (spun by the caller on another thread)."""

    def __init__(self, node, options: ReplayOptions, log=print):
        if options.rate <= 0:
            raise ReplayError(f'--rate must be > 0, got {options.rate}')
        self.node = node
        self.o = options
        self.log = log
        self.summary = ReplaySummary()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sink = None
        self._subs = []
        self._pubs = []
        self._ready = threading.Event()
        # wall (monotonic) <-> bag time mapping, set when playing starts
        self._t0_wall: float | None = None
        self._t0_bag: int = 0
        self._last_clock = 0
        self._epoch_offset = time.time_ns() - time.monotonic_ns()

    def stop(self) -> None:
        """Ask run() to stop playing and waiting (from another thread or a signal handler)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def bag_now_ns(self) -> int | None:
        """Return the recording time that playback has reached (None before it started)."""
        if self._t0_wall is None:
            return None
        return self._t0_bag + int((time.monotonic() - self._t0_wall) * self.o.rate * 1e9)

    # -- the whole run ----------------------------------------------------------------------
    def run(self) -> ReplaySummary:
        o = self.o
        reader = open_reader(o.bag)
        try:
            played = self._playable(select_topics(reader, o.topics, o.remaps))
            self.summary.bag_duration_s = reader.duration / 1e9 if reader.message_count else 0.0
            publishers = self._make_publishers(played)
            deadline = time.monotonic() + o.timeout
            t_wait = time.monotonic()
            record = self._resolve_record_types(deadline)
            try:
                self._start_recording(record)
                self._wait_graph(publishers, record, deadline)
                self.summary.waited_s = time.monotonic() - t_wait
                self._play(reader, played, publishers)
                if not self._stop.is_set() and o.settle > 0:
                    self.log(f'settling {o.settle:g} s for outstanding messages')
                    self._settle(o.settle)
            finally:
                self.summary.interrupted = self._stop.is_set()
                self._finish_recording()
        finally:
            reader.close()
            for pub in self._pubs:
                self.node.destroy_publisher(pub)
            self._pubs.clear()
        return self.summary

    # -- set-up -------------------------------------------------------------------------------
    def _qos(self):
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=self.o.depth,
                          durability=DurabilityPolicy.VOLATILE,
                          reliability=(ReliabilityPolicy.BEST_EFFORT
                                       if self.o.reliability == 'best_effort'
                                       else ReliabilityPolicy.RELIABLE))

    def _playable(self, played: list) -> list:
        """Drop the topics whose message type is not installed, with one warning each.

        Only when the whole bag is played: a bag often holds topics of packages this machine
        lacks (or an mcap channel without a schema), and the camera should play anyway. A
        topic asked for by name (--topic) must be playable: ReplayError. Nothing playable at
        all is a ReplayError too.
        """
        out = []
        for p in played:
            try:
                message_class(p.msgtype)
            except ReplayError as e:
                if self.o.topics:
                    raise
                self.log(f'warning: skipping {p.bag_topic} ({p.count} messages): {e}')
                continue
            out.append(p)
        if played and not out:
            raise ReplayError('no topic of the bag can be played: none of their message types '
                              'is installed')
        return out

    def _make_publishers(self, played) -> dict:
        publishers = {}
        for p in played:
            pub = self.node.create_publisher(message_class(p.msgtype), p.topic, self._qos())
            self._pubs.append(pub)
            publishers[p.bag_topic] = (p, pub)
            self.summary.played[p.topic] = 0
            arrow = f' -> {p.topic}' if p.topic != p.bag_topic else ''
            self.log(f'play {p.bag_topic}{arrow} ({p.msgtype}, {p.count} messages)')
        if self.o.clock_hz > 0:
            from rclpy.qos import QoSProfile
            self._clock_cls = message_class('rosgraph_msgs/msg/Clock')
            self._clock_pub = self.node.create_publisher(self._clock_cls, '/clock',
                                                         QoSProfile(depth=1))
            self._pubs.append(self._clock_pub)
        return publishers

    def _resolve_record_types(self, deadline: float) -> dict:
        """Map each topic to record to its type; types not given are read from the graph."""
        record = {}
        unknown = []
        for topic, msgtype in self.o.record:
            name = self._absolute(topic)
            record[name] = msgtype
            if not msgtype:
                unknown.append(name)
        if unknown:
            self.log(f'waiting for the type(s) of {", ".join(unknown)} (up to '
                     f'{max(0.0, deadline - time.monotonic()):.0f} s)')
        while unknown:
            graph = dict(self.node.get_topic_names_and_types())
            for name in list(unknown):
                types = graph.get(name)
                if types:
                    record[name] = types[0]
                    unknown.remove(name)
            if not unknown:
                break
            if self._stop.is_set():
                return {t: m for t, m in record.items() if m}
            if time.monotonic() > deadline:
                raise ReplayTimeout(f'no publisher of {", ".join(unknown)} appeared within '
                                  f'{self.o.timeout:g} s: is the node running (same '
                                  'ROS_DOMAIN_ID, loopback settings)? Or give the type as '
                                  'TOPIC:pkg/msg/Type')
            time.sleep(0.1)
        return record

    def _absolute(self, topic: str) -> str:
        return topic if topic.startswith('/') else '/' + topic.lstrip('~/')

    def _start_recording(self, record: dict) -> None:
        if not record:
            return
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        self._sink = make_sink(self.o.out or '-', record, self.o.out_storage)
        for topic, msgtype in record.items():
            self.summary.recorded[topic] = 0
            qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
            sub = self.node.create_subscription(
                message_class(msgtype), topic, self._recorder(topic, msgtype), qos, raw=True)
            self._subs.append(sub)
        where = 'stdout' if (self.o.out or '-') == '-' else self.o.out
        self.log(f'record {", ".join(record)} -> {where}')

    def _recorder(self, topic: str, msgtype: str):
        def callback(raw: bytes) -> None:
            recv_ns = time.monotonic_ns() + self._epoch_offset
            with self._lock:
                if self._sink is None:
                    return
                self._sink.write(topic, msgtype, recv_ns, self.bag_now_ns(), raw)
                self.summary.recorded[topic] += 1
        return callback

    def _finish_recording(self) -> None:
        for sub in self._subs:
            self.node.destroy_subscription(sub)
        self._subs.clear()
        with self._lock:
            if self._sink is not None:
                self._sink.close()
                self._sink = None

    # -- waiting ------------------------------------------------------------------------------
    def _wait_graph(self, publishers: dict, record: dict, deadline: float) -> None:
        o = self.o
        if o.wait_ready:
            self._wait_ready(deadline)
        if o.wait_subscribers > 0:
            names = ', '.join(p.topic for p, _ in publishers.values())
            self.log(f'waiting for {o.wait_subscribers} subscriber(s) on {names}')
            self._wait(lambda: all(pub.get_subscription_count() >= o.wait_subscribers
                                   for _, pub in publishers.values()),
                       deadline, f'{o.wait_subscribers} subscriber(s) on {names}')
        if record:
            self._wait(lambda: all(self.node.count_publishers(t) > 0 for t in record),
                       deadline, f'publishers of {", ".join(record)}')
        if (o.wait_subscribers > 0 or record) and not self._stop.is_set():
            self._stop.wait(MATCH_GRACE_S)

    def _wait(self, predicate, deadline: float, what: str) -> None:
        while not predicate():
            if self._stop.is_set():
                return
            if time.monotonic() > deadline:
                raise ReplayTimeout(f'timed out after {self.o.timeout:g} s waiting for {what}: '
                                  'is the node running (same ROS_DOMAIN_ID, loopback settings, '
                                  'topic names)?')
            time.sleep(0.05)

    def _wait_ready(self, deadline: float) -> None:
        """Wait for a /diagnostics status of a qwen_vl node whose 'state' value is 'ready'."""
        from diagnostic_msgs.msg import DiagnosticArray

        def on_diag(arr) -> None:
            for st in arr.status:
                if any(kv.key == 'state' and kv.value == 'ready' for kv in st.values):
                    self._ready.set()

        self.log('waiting for the node to report state "ready" on /diagnostics')
        if self.o.clock_hz > 0:
            self.log('(a node with use_sim_time publishes /diagnostics only while /clock runs, '
                     'i.e. not before playing: wait for its "ready:" log line instead)')
        sub = self.node.create_subscription(DiagnosticArray, '/diagnostics', on_diag, 10)
        try:
            self._wait(self._ready.is_set, deadline,
                       'a node reporting state "ready" on /diagnostics (model loaded)')
        finally:
            self.node.destroy_subscription(sub)

    # -- playing ------------------------------------------------------------------------------
    def _play(self, reader, played, publishers: dict) -> None:
        if self._stop.is_set():
            return
        conns = [c for p in played for c in p.connections]
        rate = self.o.rate
        clock_dt = 1.0 / self.o.clock_hz if self.o.clock_hz > 0 else None
        next_clock = None
        first = last = None
        max_late = 0.0
        self.log(f'playing at rate {rate:g}')
        for conn, t_bag, raw in reader.messages(connections=conns):
            if self._t0_wall is None:
                self._t0_bag = t_bag
                self._t0_wall = time.monotonic()
                next_clock = self._t0_wall
            due = self._t0_wall + (t_bag - self._t0_bag) / 1e9 / rate
            while True:
                now = time.monotonic()
                if clock_dt is not None and next_clock <= min(now, due):
                    self._publish_clock(self.bag_now_ns())
                    next_clock += clock_dt
                    continue
                wake = due if clock_dt is None else min(due, next_clock)
                if now >= due or self._stop.wait(max(0.0, wake - now)):
                    break
            if self._stop.is_set():
                break
            p, pub = publishers[conn.topic]
            if clock_dt is not None:
                self._publish_clock(t_bag)
            pub.publish(bytes(raw))
            sent = time.monotonic()
            max_late = max(max_late, sent - due)
            self.summary.played[p.topic] += 1
            first = sent if first is None else first
            last = sent
        if first is not None:
            self.summary.play_s = last - first
        self.summary.max_late_ms = 1e3 * max_late

    def _settle(self, seconds: float) -> None:
        """Wait, still recording; with --clock the bag time keeps running (timers still tick)."""
        end = time.monotonic() + seconds
        if self.o.clock_hz <= 0 or self._t0_wall is None:
            self._stop.wait(seconds)
            return
        while not self._stop.is_set() and time.monotonic() < end:
            self._publish_clock(self.bag_now_ns())
            self._stop.wait(min(1.0 / self.o.clock_hz, max(0.0, end - time.monotonic())))

    def _publish_clock(self, bag_ns: int) -> None:
        """Publish the bag time on /clock; it never goes backwards."""
        bag_ns = max(bag_ns, self._last_clock)
        self._last_clock = bag_ns
        msg = self._clock_cls()
        msg.clock.sec = bag_ns // 1_000_000_000
        msg.clock.nanosec = bag_ns % 1_000_000_000
        self._clock_pub.publish(msg)
