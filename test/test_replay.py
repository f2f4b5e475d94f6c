"""qwen-vl-replay: bags written with rosbags, played into a real ROS graph, answers recorded.

Two halves:
- the tool against a small echo node in this process (timing, rate, remap, topic choice, /clock,
  JSONL and bag outputs with a custom message type, time-outs and bad arguments);
- the tool against the real node (describe_node as a subprocess, tiny exported model, timer
  mode): every description's stamp is the stamp of a frame in the bag, and every timer tick is
  accounted for (described, or counted as skipped / failed in the node's /diagnostics).

The replay tool runs as a subprocess with the test's loopback environment (conftest.py).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from qwen_vl_ros.bagtools import (COMPRESSED_IMAGE, compressed_message, moving_shapes,
                                  typestore, write_bag, write_camera_bag)

REPO = Path(__file__).resolve().parents[1]
CAMERA = '/camera/image_raw'


def replay_env() -> dict:
    env = dict(os.environ)
    assert env.get('ROS_AUTOMATIC_DISCOVERY_RANGE') == 'LOCALHOST', 'conftest sets it'
    env.update(ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', ROS_LOCALHOST_ONLY='1',
               AMENT_PREFIX_PATH=sys.prefix, PYTHONUNBUFFERED='1', HF_HUB_OFFLINE='1')
    env.pop('ROS_STATIC_PEERS', None)
    return env


def run_replay(*args, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run qwen-vl-replay (this checkout's code) and return the finished process."""
    cmd = [sys.executable, '-m', 'qwen_vl_ros.replay.cli', *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, env=replay_env(), capture_output=True, text=True,
                          timeout=timeout)


def read_jsonl(path) -> list:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def stamp_ns(stamp) -> int:
    if isinstance(stamp, dict):
        return stamp['sec'] * 1_000_000_000 + stamp['nanosec']
    return stamp.sec * 1_000_000_000 + stamp.nanosec


# -- an echo node in the test process -----------------------------------------------------------
class Echo:
    """Subscribes the played camera topic; answers every frame with a Description on /echo.

    The answer's header is the frame's header (as the real node's are), its text the arrival
    number. Also keeps what arrives on /clock.
    """

    def __init__(self, topic: str, compressed: bool = False):
        import rclpy
        from qwen_vl_interfaces.msg import Description
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import CompressedImage, Image

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node('replay_test_echo', context=self.context)
        # (publisher's send time s, header stamp ns, frame_id): the send time is the rmw's
        # source_timestamp, so a stall of this process's executor does not move it
        self.frames = []
        self.clock = []
        self._Description = Description
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.pub = self.node.create_publisher(Description, '/echo', qos)
        self.node.create_subscription(CompressedImage if compressed else Image, topic,
                                      self._on_frame, qos)
        self.node.create_subscription(Clock, '/clock', lambda m: self.clock.append(
            stamp_ns(m.clock)), 100)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.05)

    def _on_frame(self, msg, info):
        self.frames.append((info['source_timestamp'] * 1e-9, stamp_ns(msg.header.stamp),
                            msg.header.frame_id))
        out = self._Description()
        out.header = msg.header
        out.text = f'frame {len(self.frames)}'
        out.trigger = 'echo'
        self.pub.publish(out)

    def close(self):
        import rclpy
        self._stop.set()
        self._thread.join(2.0)
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@pytest.fixture
def echo_factory():
    made = []

    def make(topic, compressed=False):
        made.append(Echo(topic, compressed))
        return made[-1]

    yield make
    for e in made:
        e.close()


# -- the tool against the echo node ---------------------------------------------------------------
def test_replay_keeps_timing_scaled_by_rate_and_records_jsonl(tmp_path, echo_factory):
    bag = write_camera_bag(tmp_path / 'bag', frames=12, fps=10.0, width=64, height=48,
                           encoding='bgr8', storage='sqlite3')
    echo = echo_factory('/cam/image')
    out = tmp_path / 'out.jsonl'
    t0 = time.monotonic()
    r = run_replay(bag.path, '--remap', '/camera/image_raw:=/cam/image', '--rate', 2,
                   '--record', '/echo', '--out', out, '--settle', 0.5, '--timeout', 20,
                   '--clock', 50)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert 'played 12 message(s)' in r.stderr and 'recorded /echo: 12' in r.stderr, r.stderr

    # every frame arrived, in order, with its recorded header
    assert [s for _, s, _ in echo.frames] == bag.stamps_ns
    assert {f for _, _, f in echo.frames} == {'camera'}
    # recorded spacing 100 ms at rate 2 -> 50 ms (rate 1 would be 100 ms, no pacing ~0), by
    # the publisher's send times (an idle CI run once took all 12 in one burst here: the echo's
    # executor had stalled). A stall of the replay process makes one gap long and the next ones
    # short, so the median gap and the whole span are checked, not each gap; the span also
    # catches a drift (a delay added per frame).
    arrivals = [t for t, _, _ in echo.frames]
    gaps = sorted(b - a for a, b in zip(arrivals, arrivals[1:]))
    assert 0.035 < gaps[len(gaps) // 2] < 0.065, gaps
    assert 0.45 < arrivals[-1] - arrivals[0] < 0.85, arrivals[-1] - arrivals[0]
    assert took < 20

    lines = read_jsonl(out)
    assert len(lines) == 12
    assert {(d['topic'], d['type']) for d in lines} == {
        ('/echo', 'qwen_vl_interfaces/msg/Description')}
    assert [stamp_ns(d['msg']['header']['stamp']) for d in lines] == bag.stamps_ns
    assert [d['msg']['text'] for d in lines] == [f'frame {i + 1}' for i in range(12)]
    recv = [d['recv_ns'] for d in lines]
    assert recv == sorted(recv) and abs(recv[0] - time.time_ns()) < 60e9
    # bag_ns: the recording time reached when each answer came back
    for d, bag_ns in zip(lines, bag.bag_times_ns):
        assert bag_ns <= d['bag_ns'] < bag_ns + 1e9

    # /clock followed the bag time while playing, and kept running (at rate 2) while settling
    assert len(echo.clock) >= 12
    assert echo.clock == sorted(echo.clock)
    assert bag.bag_times_ns[0] <= echo.clock[0]
    assert bag.bag_times_ns[-1] <= echo.clock[-1] <= bag.bag_times_ns[-1] + 1.2e9


def test_replay_compressed_mcap_one_topic_into_a_bag(tmp_path, echo_factory):
    store = typestore()
    start = time.time_ns()
    messages, stamps = [], []
    for i in range(6):
        t = start + i * 50_000_000
        rgb = moving_shapes(i, 64, 48)
        messages.append(('/front/image/compressed', COMPRESSED_IMAGE, t,
                         compressed_message(store, rgb, t - 1000, 'front')))
        stamps.append(t - 1000)
        # a second camera topic that is not chosen for playing
        messages.append(('/rear/image/compressed', COMPRESSED_IMAGE, t + 1,
                         compressed_message(store, rgb, t, 'rear')))
    write_bag(tmp_path / 'bag', messages, storage='mcap', store=store)
    echo = echo_factory('/front/image/compressed', compressed=True)
    rear = []
    from sensor_msgs.msg import CompressedImage
    echo.node.create_subscription(CompressedImage, '/rear/image/compressed', rear.append, 10)

    out = tmp_path / 'answers'
    r = run_replay(tmp_path / 'bag' / 'bag.mcap', '--topic', '/front/image/compressed',
                   '--record', '/echo:qwen_vl_interfaces/msg/Description', '--out', out,
                   '--out-storage', 'mcap', '--settle', 0.5, '--timeout', 20)
    assert r.returncode == 0, r.stderr
    assert [s for _, s, _ in echo.frames] == stamps
    assert rear == []

    from rosbags.highlevel import AnyReader
    with AnyReader([out]) as reader:
        assert [(c.topic, c.msgtype) for c in reader.connections] == [
            ('/echo', 'qwen_vl_interfaces/msg/Description')]
        got = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages()]
    assert [stamp_ns(m.header.stamp) for m in got] == stamps
    assert [m.header.frame_id for m in got] == ['front'] * 6
    assert (out / 'metadata.yaml').is_file() and list(out.glob('*.mcap'))


def test_replay_without_subscriber_times_out(tmp_path):
    bag = write_camera_bag(tmp_path / 'bag', frames=2, width=32, height=24)
    t0 = time.monotonic()
    r = run_replay(bag.path, '--remap', '/camera/image_raw:=/nobody/listens', '--timeout', 1)
    assert r.returncode == 3, r.stderr
    assert 'timed out after 1 s waiting for 1 subscriber(s) on /nobody/listens' in r.stderr
    assert time.monotonic() - t0 < 15


@pytest.mark.parametrize('args, message', [
    (['--topic', '/not/there'], 'not in the bag'),
    (['--remap', 'no-separator'], 'FROM:=TO'),
    (['--rate', '0'], '--rate must be > 0'),
])
def test_replay_bad_arguments(tmp_path, args, message):
    bag = write_camera_bag(tmp_path / 'bag', frames=2, width=32, height=24)
    r = run_replay(bag.path, *args, '--timeout', 1)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr


def test_replay_stops_cleanly_on_sigint(tmp_path, echo_factory):
    bag = write_camera_bag(tmp_path / 'bag', frames=100, fps=10.0, width=32, height=24)
    echo_factory(CAMERA)
    out = tmp_path / 'out.jsonl'
    cmd = [sys.executable, '-m', 'qwen_vl_ros.replay.cli', str(bag.path), '--record', '/echo',
           '--out', str(out), '--timeout', '20']
    proc = subprocess.Popen(cmd, cwd=REPO, env=replay_env(), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(read_jsonl(out) if out.exists() else []) < 3:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    assert 'SIGINT: stopping' in err and 'interrupted' in err and 'Traceback' not in err
    lines = read_jsonl(out)     # every line complete
    assert 3 <= len(lines) < 100
    assert [stamp_ns(d['msg']['header']['stamp']) for d in lines] == \
        bag.stamps_ns[:len(lines)]


def test_network_defaults_to_loopback_and_warns_otherwise():
    from qwen_vl_ros.replay.cli import check_network
    warnings = []
    env = {}
    check_network(False, env, warnings.append)
    assert env == {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST', 'ROS_LOCALHOST_ONLY': '1'}
    assert len(warnings) == 1 and '--network' in warnings[0]
    for given in ({'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}, {'ROS_LOCALHOST_ONLY': '1'},
                  {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'OFF'}):
        warnings.clear()
        env = dict(given)
        check_network(False, env, warnings.append)
        assert env == given and warnings == []
    env = {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SUBNET'}
    check_network(False, env, warnings.append)
    assert env == {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SUBNET'}
    assert len(warnings) == 1 and 'WARNING' in warnings[0] and 'leave this machine' in warnings[0]
    warnings.clear()
    check_network(True, env, warnings.append)
    check_network(True, {}, warnings.append)
    assert warnings == []


def test_replay_missing_bag(tmp_path):
    r = run_replay(tmp_path / 'nothing', '--timeout', 1)
    assert r.returncode == 2 and 'no bag at' in r.stderr


# -- the tool against the real node ------------------------------------------------------------
PERIOD_S = 0.25
# What a timer tick can end as, in the node's /diagnostics counters (a timer-only run: every
# description and every failed job came from a tick).
TICK_OUTCOMES = ('descriptions', 'timer_skipped_busy', 'timer_skipped_no_frame',
                 'timer_skipped_stale', 'timer_skipped_loading', 'image_errors', 'prompt_errors',
                 'runtime_errors', 'internal_errors', 'cancelled')


def node_counters(lines) -> list:
    """[(diagnostics stamp ns, {key: value}), ...] of the qwen_vl node, in the order received."""
    out = []
    for d in lines:
        if d['topic'] != '/diagnostics':
            continue
        # one status per concern: their values together
        values = {kv['key']: kv['value'] for st in d['msg']['status']
                  if st['name'].startswith('/qwen_vl: ') for kv in st['values']}
        if values:
            out.append((stamp_ns(d['msg']['header']['stamp']), values))
    return out


def accounted(values: dict) -> int:
    """Count the ticks that ended (outcome counters) plus the jobs queued or running."""
    return sum(int(values.get(k, 0)) for k in TICK_OUTCOMES + ('pending_requests',))


def final_counters(log: str) -> dict:
    """Parse the node's last log line, 'stopped (name value, ...)': its non-zero counters."""
    m = re.findall(r': stopped \((.*)\)', log)
    assert m, 'no "stopped (...)" summary in the node log:\n' + log[-3000:]
    pairs = [p.rsplit(' ', 1) for p in m[-1].split(', ') if ' ' in p]
    return {k: v for k, v in pairs if v.isdigit()}


def check_every_tick_accounted(snapshots, final: dict, period_s: float) -> None:
    """Every timer tick ended as a description, a skip or a failure (the node's timer_ticks).

    In the final counters (all jobs done) exactly; between the first and the last /diagnostics
    snapshot within one tick (a snapshot may fall inside a tick; a tick whose job is still
    queued or running counts as pending). And never more ticks than the node-clock time between
    the snapshots allows (fewer is possible: rcl drops the periods that pass while the executor
    is late).
    """
    assert 'timer_ticks' in final, f'the node does not count its timer ticks: {final}'
    assert int(final['timer_ticks']) == accounted(final), final
    assert len(snapshots) >= 2, snapshots
    (t_first, first), (t_last, last) = snapshots[0], snapshots[-1]
    ticks = int(last['timer_ticks']) - int(first['timer_ticks'])
    assert abs(ticks - (accounted(last) - accounted(first))) <= 1, (first, last)
    assert ticks <= (t_last - t_first) / 1e9 / period_s + 1.5, (first, last)


@pytest.fixture
def node_harness():
    pytest.importorskip('qwen_vl_ros.ros.node', reason='describe_node is not there yet')
    return pytest.importorskip('node_harness')


@pytest.mark.timeout(90)
@pytest.mark.parametrize('encoding, storage, sim_time', [
    ('rgb8', 'sqlite3', False),
    ('jpeg', 'mcap', True),
], ids=['raw-sqlite3-wallclock', 'compressed-mcap-simtime'])
def test_node_describes_replayed_frames_on_its_timer(tmp_path, tiny_onnx_dir, node_harness,
                                                      encoding, storage, sim_time):
    """Timer mode on a replayed recording: stamps from the bag, every tick accounted for.

    Wall clock: the recording was made just now, but the node is only ready some seconds
    later, so the age limit is off (max_image_age_s 0). Sim time: the recording is from 2024
    and the replay publishes its time on /clock; the node (use_sim_time) keeps the default age
    limit and must find no frame stale.
    """
    compressed = encoding in ('jpeg', 'png')
    start_ns = 1_704_067_200_000_000_000 if sim_time else None   # 2024-01-01
    bag = write_camera_bag(tmp_path / 'bag', frames=30, fps=10.0, width=160, height=120,
                           encoding=encoding, storage=storage, start_ns=start_ns)
    params = dict(threads=1, period_s=PERIOD_S, max_new_tokens=6, queue_size=2,
                  image_transport='compressed' if compressed else 'raw')
    if sim_time:
        params['use_sim_time'] = True
    else:
        params['max_image_age_s'] = 0.0
    args = node_harness.launch_arguments(model_dir=str(tiny_onnx_dir), backend='onnxruntime',
                                         image_topic=CAMERA, **params)
    node = node_harness.NodeProcess(args, tmp_path / 'node')
    out = tmp_path / 'answers.jsonl'
    try:
        if sim_time:
            # the node's /diagnostics timer runs on the (not yet published) bag clock
            node.wait_for_log(node_harness.READY, 90)
            wait = ['--clock', 20]
        else:
            wait = ['--wait-ready']
        r = run_replay(bag.path, *wait, '--record', '/qwen_vl/description/stamped',
                       '--record', '/diagnostics', '--out', out, '--settle', 2.5,
                       '--timeout', 60, timeout=80)
    finally:
        node.stop()     # (a clean exit on SIGTERM is test_node.py's business)
    log = node.output()
    assert r.returncode == 0, r.stderr + log[-3000:]

    lines = read_jsonl(out)
    descriptions = [d for d in lines if d['topic'] == '/qwen_vl/description/stamped']
    stamps = set(bag.stamps_ns)
    assert len(descriptions) >= 2, (r.stderr, log[-3000:])
    got = [stamp_ns(d['msg']['header']['stamp']) for d in descriptions]
    assert all(s in stamps for s in got), 'a description stamp that is no frame of the bag'
    assert got == sorted(set(got)), 'the timer described a frame twice, or out of order'
    for d in descriptions:
        m = d['msg']
        assert m['header']['frame_id'] == 'camera'
        assert m['trigger'] == 'timer' and m['prompt'] == 'Describe this image.'
        assert m['prompt_tokens'] > 0 and 0 <= m['generated_tokens'] <= 6
        assert m['vision_ms'] > 0 and m['time_to_first_token_ms'] > 0
        assert stamp_ns(m['header']['stamp']) <= d['bag_ns']   # described after it was played

    final = final_counters(log)
    check_every_tick_accounted(node_counters(lines), final, PERIOD_S)
    assert int(final.get('descriptions', 0)) == len(descriptions), 'a description was lost'
    assert 'timer_skipped_stale' not in final, final
    assert not {'image_errors', 'prompt_errors', 'runtime_errors', 'internal_errors'} & set(final)
    assert 0 < int(final['frames_received']) <= len(bag.stamps_ns)
