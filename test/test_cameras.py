"""Three cameras on one node: one replayed bag with three image topics, one model, one worker.

describe_node runs with ``cameras: [left, middle, right]`` (each <camera>/image remapped to its
bag topic), a 0.5 s timer for all three, and sim time from the replay's /clock. The bag holds
three streams of different content and rate (10, 5 and 4 Hz; frame_ids say which); the right
camera stops 6 s before the others. While it plays, the test names cameras in requests and
watches /diagnostics; afterwards it reads what each camera's topics got:

- each camera's descriptions go to its own topics, stamped with its own frames;
- a request naming a camera gets that camera's frame ('' = the first; an unknown name is
  refused with the list of cameras);
- with the timer at 0.5 s on all three for 20 s, each camera gets at least a quarter of the
  described ticks (round-robin on the one worker: no camera starves);
- when the right camera's stream stops, only its status (`camera right`) goes WARN.
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip('rclpy')
pytest.importorskip('qwen_vl_interfaces')

from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from node_harness import NodeProcess, READY, RosClient, launch_arguments  # noqa: E402
from test_replay import REPO, replay_env  # noqa: E402

from qwen_vl_ros.bagtools import (  # noqa: E402
    IMAGE, image_message, moving_shapes, typestore, write_bag)

pytestmark = pytest.mark.timeout(240)

START_NS = 1_704_067_200_000_000_000     # 2024-01-01: the node runs on the bag's clock
PERIOD_S = 0.5
FAIR_S = 20.0          # all three cameras stream (and are counted) for this long
END_S = 26.0           # left and middle go on until here; right stops at FAIR_S
MAX_AGE_S = 1.5
# camera -> (bag topic, rate Hz, seconds streamed, content)
CAMERAS = {
    'left': ('/cams/left_raw', 10.0, END_S, lambda i: moving_shapes(i, 160, 120, 10.0)),
    'middle': ('/cams/middle_raw', 5.0, END_S,
               lambda i: 255 - moving_shapes(i, 160, 120, 5.0)),
    'right': ('/cams/right_raw', 4.0, FAIR_S,
              lambda i: np.ascontiguousarray(moving_shapes(i, 160, 120, 4.0)[::-1, :, ::-1])),
}
OK, WARN = DiagnosticStatus.OK, DiagnosticStatus.WARN


def write_three_camera_bag(path) -> dict:
    """Write the bag; return {camera: set of its header stamps (ns)}."""
    store = typestore()
    messages, stamps = [], {}
    for name, (topic, hz, seconds, content) in CAMERAS.items():
        stamps[name] = set()
        for i in range(int(seconds * hz)):
            bag_ns = START_NS + int(round(i * 1e9 / hz))
            messages.append((topic, IMAGE, bag_ns,
                             image_message(store, content(i), bag_ns, f'{name}_optical')))
            stamps[name].add(bag_ns)
    messages.sort(key=lambda m: m[2])
    write_bag(path, messages, store=store)
    return stamps


def stamp_ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


class Watcher:
    """Each camera's ~/<camera>/description/stamped, the bag clock and the camera statuses."""

    def __init__(self, client: RosClient):
        from qwen_vl_interfaces.msg import Description
        from rosgraph_msgs.msg import Clock
        self.client = client
        self.got = {name: [] for name in CAMERAS}
        self.clock_ns = 0
        for name in CAMERAS:
            client.node.create_subscription(Description, f'/qwen_vl/{name}/description/stamped',
                                            client._keep(self.got[name]), 100)
        client.node.create_subscription(Clock, '/clock', self._on_clock, 10)

    def _on_clock(self, msg):
        self.clock_ns = stamp_ns(msg.clock)

    def bag_s(self) -> float:
        return (self.clock_ns - START_NS) / 1e9 if self.clock_ns else -1.0

    def wait_bag_time(self, seconds: float, timeout: float = 90.0) -> None:
        self.client.wait_until(lambda: self.bag_s() >= seconds, timeout,
                               f'bag time {seconds} s')

    def camera_levels(self) -> dict | None:
        """{camera: (level, message)} of the newest /diagnostics array of the node."""
        with self.client._cond:
            for arr in reversed(self.client.diagnostics):
                own = {st.name.rsplit(': camera ', 1)[1]: (st.level, st.message)
                       for st in self.client.own_statuses(arr) if ': camera ' in st.name}
                if own:
                    return own
        return None


def request(client, srv_type, name: str, timeout: float = 60.0, **fields):
    c = client.node.create_client(srv_type, f'/qwen_vl/{name}')
    assert c.wait_for_service(timeout_sec=30), name
    done, future = client.call_async(c, srv_type.Request(**fields))
    assert done.wait(timeout), f'no {name} answer'
    return future.result()


@pytest.fixture(scope='module')
def run(export_variant, tmp_path_factory):
    """Play the bag into the three-camera node; return what was seen."""
    from qwen_vl_interfaces.srv import Describe

    from qwen_vl_ros.ros import detect as detect_io
    tmp = tmp_path_factory.mktemp('cameras')
    stamps = write_three_camera_bag(tmp / 'bag')
    # 224x224: a ~/detect prompt fits the prefill (as in test_node_detect.py)
    args = launch_arguments(model_dir=str(export_variant(image_size=(224, 224))),
                            backend='onnxruntime', threads=1, period_s=PERIOD_S,
                            max_new_tokens=4, queue_size=2, max_image_age_s=MAX_AGE_S,
                            use_sim_time=True,
                            cameras=list(CAMERAS))
    for name, (topic, *_) in CAMERAS.items():
        args += ['-r', f'{name}/image:={topic}']
    node = NodeProcess(args, tmp / 'node')
    client = RosClient()
    seen = {'stamps': stamps}
    replay = None
    try:
        watch = Watcher(client)
        node.wait_for_log(READY, 90)
        replay = subprocess.Popen(
            [sys.executable, '-m', 'qwen_vl_ros.replay.cli', str(tmp / 'bag'), '--clock', '20',
             '--settle', '3', '--timeout', '60'], cwd=REPO, env=replay_env(),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        watch.wait_bag_time(8.0)
        seen['named'] = request(client, Describe, 'describe', camera='middle', max_new_tokens=4)
        seen['default'] = request(client, Describe, 'describe', max_new_tokens=4)
        seen['unknown'] = request(client, Describe, 'describe', camera='top')
        if detect_io.AVAILABLE:
            seen['detect'] = request(client, detect_io.Detect, 'detect', camera='right',
                                     labels=['disc'], max_new_tokens=4)
        # right has stopped (FAIR_S); left and middle stream until END_S
        watch.wait_bag_time(FAIR_S + MAX_AGE_S)
        levels = []

        def right_alone_warns():
            now = watch.camera_levels()
            if now and watch.bag_s() > FAIR_S + MAX_AGE_S:
                levels.append(now)
                return now['right'][0] == WARN
            return False
        client.wait_until(right_alone_warns, 60, 'camera right WARN')
        seen['levels'] = levels[-1]
        out, _ = replay.communicate(timeout=90)
        assert replay.returncode == 0, out
        time.sleep(1.0)
        seen['got'] = {name: list(msgs) for name, msgs in watch.got.items()}
        seen['log'] = node.output()
    finally:
        if replay is not None and replay.poll() is None:
            replay.kill()
        node.stop()
        client.close()
    return seen


def test_each_camera_publishes_on_its_own_topics_with_its_own_stamps(run):
    for name, msgs in run['got'].items():
        assert msgs, f'camera {name}: no description\n{run["log"][-3000:]}'
        for m in msgs:
            assert m.header.frame_id == f'{name}_optical', (name, m.header.frame_id)
            assert stamp_ns(m.header.stamp) in run['stamps'][name], name


def test_a_request_naming_a_camera_gets_that_cameras_frame(run):
    named, default, unknown = run['named'], run['default'], run['unknown']
    assert named.success, named.message
    d = named.description
    assert d.header.frame_id == 'middle_optical' and stamp_ns(d.header.stamp) in \
        run['stamps']['middle']
    assert default.success and default.description.header.frame_id == 'left_optical', \
        default.message
    assert not unknown.success
    assert unknown.message == "unknown camera 'top': the cameras are left, middle, right"
    if 'detect' in run:
        det = run['detect']     # (a box list the budget cut is success false, boxes kept)
        assert det.success or 'max_new_tokens = 4 was reached' in det.message, det.message
        assert det.detections.header.frame_id == 'right_optical'
        assert stamp_ns(det.detections.header.stamp) in run['stamps']['right']


def test_the_timer_serves_every_camera_fairly(run):
    """0.5 s on all three for 20 s: each camera has at least a quarter of the timer's answers."""
    end = START_NS + int(FAIR_S * 1e9)
    timer = {name: [m for m in msgs if m.trigger == 'timer' and stamp_ns(m.header.stamp) < end]
             for name, msgs in run['got'].items()}
    counts = {name: len(msgs) for name, msgs in timer.items()}
    total = sum(counts.values())
    assert total >= 12, counts       # the worker was not idle all along
    for name, n in counts.items():
        assert n >= total / 4, f'camera {name} starved: {counts}'


def test_only_the_stopped_camera_warns(run):
    levels = run['levels']
    assert set(levels) == set(CAMERAS)
    level, message = levels['right']
    assert level == WARN and 'the newest frame on /cams/right_raw is ' in message, message
    for name in ('left', 'middle'):
        assert levels[name][0] == OK, (name, levels[name])
        assert levels[name][1].startswith(f'receiving {CAMERAS[name][0]}: '), levels[name]


def test_camera_names_are_checked(tiny_onnx_dir, tmp_path):
    """A camera name that cannot be a ROS name token is refused at start (exit code 2)."""
    from node_harness import run_node_once
    args = launch_arguments(model_dir=str(tiny_onnx_dir), cameras=['front', 'front'])
    rc, out = run_node_once(args, tmp_path, 60)
    assert rc == 2 and 'cameras: a name is given twice: front, front' in out, out[-2000:]
    args = launch_arguments(model_dir=str(tiny_onnx_dir), cameras=['front', '2nd'])
    rc, out = run_node_once(args, tmp_path / 'b', 60)
    assert rc == 2 and "cameras: '2nd' is not a camera name" in out, out[-2000:]



def test_readme_several_cameras_section(tiny_onnx_dir, tmp_path):
    """The README's two-camera commands, run as written (the model directory: the tiny one).

    The launch takes cameras, image_topics and the installed config/cameras.yaml (rear:
    compressed); the service call naming the rear camera is answered about the rear camera's
    frame, and its descriptions come on ~/rear/description/stamped.
    """
    from ros2_cli import (NO_ROS2, README_MODEL_DIR, ROS2, Background, cli_env, readme_commands,
                          stop_daemon, wait_node_visible)
    from ros2_cli import run as run_cli
    from test_ros2_cli import _ended_cleanly, camera, launched
    if not ROS2.exists():
        pytest.skip(NO_ROS2)
    launch_line, call, echo_line = readme_commands('### Several cameras on one NPU')
    assert launch_line.startswith('ros2 launch qwen_vl_ros describe.launch.py')
    assert 'cameras:=front,rear' in launch_line and "{camera: rear" in call
    env = cli_env(tmp_path / 'log')
    try:
        with launched(launch_line.replace(README_MODEL_DIR, str(tiny_onnx_dir)), env,
                      tmp_path / 'launch.log') as launch, \
                camera('/rear/color/image_raw', compressed=True) as cam:
            wait_node_visible(env, '/qwen_vl')
            out = launch.output()
            assert 'image topics /front/color/image_raw (raw, reliable), ' \
                   '/rear/color/image_raw/compressed (compressed, reliable)' in out, out[-2000:]
            cam.wait_until(lambda: _value(cam.status('camera rear'), 'frames_received') > 0, 30,
                           'frames on the rear camera')
            rc, out = run_cli(call, env, timeout=120)
            assert rc == 0 and 'success=True' in out, out
            assert "prompt='Is the loading bay empty?'" in out and "frame_id='camera'" in out, out
            echo = Background(echo_line, env, tmp_path / 'echo.log')
            try:
                echo.wait_for(r'trigger: timer', 60)     # rear.period_s 10.0 (cameras.yaml)
            finally:
                echo.interrupt()
            front = cam.status('camera front')
            assert front is not None and 'no frame received on /front/color/image_raw' \
                in front.message, front
            _ended_cleanly(launch)
    finally:
        stop_daemon(env)


def _value(status, key: str) -> int:
    """Return an integer value of a DiagnosticStatus (0 when there is no status yet)."""
    return int({kv.key: kv.value for kv in status.values}[key]) if status is not None else 0
