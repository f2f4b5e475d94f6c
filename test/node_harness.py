"""Helpers of the node tests: start describe_node, talk to it, build image messages.

describe_node is started the way launch/describe.launch.py starts it; the test process talks to
it with rclpy; image messages are built in every encoding the node takes.

The network rule (shared/docs/PLATFORM.md): conftest.py sets ROS_AUTOMATIC_DISCOVERY_RANGE,
ROS_LOCALHOST_ONLY and a per-run ROS_DOMAIN_ID before anything imports rclpy; ``ros_env`` passes
them (and checks them) to the node process.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# What launch/describe.launch.py names (test_launch.py checks that they agree).
PACKAGE = 'qwen_vl_ros'
EXECUTABLE = 'describe_node'
NODE_NAME = 'qwen_vl'
PARAMS_FILE = 'describe.yaml'
READY = re.compile(r'\]: ready: ')
# The node reports on /diagnostics once a second; on a loaded machine (CI, 2 cores shared) a
# report can come several seconds late. A wait for a report is bounded by this, not by 1 s.
DIAGNOSTICS_WAIT_S = 20.0

os.environ.setdefault('AMENT_PREFIX_PATH', sys.prefix)


# -- the node process -------------------------------------------------------------------------
def share_dir() -> Path:
    """Return the installed share directory (pip install . puts it into the venv)."""
    from ament_index_python.packages import get_package_share_directory
    return Path(get_package_share_directory(PACKAGE))


def executable() -> Path:
    """Return the console script: lib/<package>/ (setup.cfg, ros2 run) or the venv's bin/."""
    for candidate in (Path(sys.prefix) / 'lib' / PACKAGE / EXECUTABLE,
                      Path(sys.prefix) / 'bin' / EXECUTABLE):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(f'{EXECUTABLE} is not installed in {sys.prefix} (run make install)')


def ros_env(log_dir: Path) -> dict:
    """Environment of a node process: loopback-only DDS, the test's domain, the venv prefix."""
    env = dict(os.environ)
    assert env.get('ROS_AUTOMATIC_DISCOVERY_RANGE') == 'LOCALHOST', 'conftest sets it'
    assert env.get('ROS_DOMAIN_ID'), 'conftest sets a per-run ROS_DOMAIN_ID'
    env.update(ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', ROS_LOCALHOST_ONLY='1',
               AMENT_PREFIX_PATH=sys.prefix, HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1',
               ROS_LOG_DIR=str(log_dir), PYTHONUNBUFFERED='1', RCUTILS_COLORIZED_OUTPUT='0',
               OMP_NUM_THREADS='1')
    env.pop('ROS_STATIC_PEERS', None)
    return env


def _yaml_value(value) -> str:
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, float):
        return repr(value)
    return str(value)


def launch_arguments(params_file=None, namespace: str = '', model_dir: str = '',
                     backend: str = '', image_topic: str = 'image', **params) -> list:
    """Return the --ros-args that launch/describe.launch.py gives describe_node.

    The keyword arguments are the launch arguments (params_file defaults to the installed
    config/describe.yaml); ``params`` are extra -p overrides of the test (e.g. threads=1).
    """
    params_file = params_file or share_dir() / 'config' / PARAMS_FILE
    args = ['--ros-args', '-r', f'__node:={NODE_NAME}']
    if namespace:
        args += ['-r', f'__ns:={namespace if namespace.startswith("/") else "/" + namespace}']
    args += ['--params-file', str(params_file)]
    for name, value in (('model_dir', model_dir), ('backend', backend)):
        if value:
            args += ['-p', f'{name}:={value}']
    for name, value in params.items():
        args += ['-p', f'{name}:={_yaml_value(value)}']
    args += ['-r', f'image:={image_topic}', '-r', f'image/compressed:={image_topic}/compressed']
    return args


def wait_for_output(process, pattern, timeout: float, start: int, who: str) -> re.Match:
    """Wait until ``pattern`` appears in ``process.output()`` after character ``start``.

    ``process`` has ``output()`` and ``proc`` (a Popen); AssertionError with the output's end
    when the process exits first or ``timeout`` seconds pass.
    """
    rx = re.compile(pattern) if isinstance(pattern, str) else pattern
    deadline = time.monotonic() + timeout
    while True:
        m = rx.search(process.output(), start)
        if m:
            return m
        if process.proc.poll() is not None:
            raise AssertionError(f'{who} exited with {process.proc.returncode} before '
                                 f'{rx.pattern!r}:\n{process.output()[-4000:]}')
        if time.monotonic() > deadline:
            raise AssertionError(f'no {rx.pattern!r} within {timeout} s from {who}:\n'
                                 f'{process.output()[-4000:]}')
        time.sleep(0.05)


class NodeProcess:
    """describe_node as a subprocess; its output goes to a log file that tests can search."""

    def __init__(self, args: list, log_dir: Path):
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / 'node.log'
        self.cmd = [str(executable())] + list(args)
        self._log = open(self.log_path, 'wb')
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=ros_env(log_dir),
                                     start_new_session=True)

    def output(self) -> str:
        return self.log_path.read_text(errors='replace')

    def wait_for_log(self, pattern, timeout: float, start: int = 0) -> re.Match:
        """Wait until ``pattern`` appears in the output after character ``start``."""
        return wait_for_output(self, pattern, timeout, start, 'node')

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig=signal.SIGTERM, timeout: float = 20.0) -> tuple[int | None, float]:
        """Send ``sig``; return (exit code or None if it had to be killed, seconds it took).

        ``timeout`` only bounds the wait (a loaded machine can take seconds to stop a node);
        the tests of the stop time itself check ``seconds``.
        """
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.wait_exit(timeout)
        took = time.monotonic() - t0
        if rc is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
        return rc, took


@contextlib.contextmanager
def ready_node(args: list, log_dir: Path, stop_signal=signal.SIGTERM, timeout: float = 90):
    """Start the node, wait for its "ready" line, yield it, and stop it with ``stop_signal``."""
    proc = NodeProcess(args, log_dir)
    try:
        proc.wait_for_log(READY, timeout)
        yield proc
    finally:
        proc.stop(stop_signal)


@contextlib.contextmanager
def in_process_node(node_class, executable_name: str, args: list, log_dir: Path,
                    wait_ready: bool = True, timeout: float = 90):
    """Yield ``node_class()`` (DescribeNode or ManagedDescribeNode) running in this process.

    The node is built as main() builds it (rclpy.init with ``args`` after ``executable_name``),
    spun by a MultiThreadedExecutor on a thread, so a test can reach its worker and count the
    runtime calls of its pipeline. ``wait_ready``: wait until the worker's model is loaded
    (AssertionError with the load error otherwise). Afterwards the node is closed and destroyed
    with its action server and lifecycle state machine: destroy_node leaves both, and their
    DDS endpoints would answer a later test's `ros2 action send_goal` or lifecycle client.
    """
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    old_log_dir = os.environ.get('ROS_LOG_DIR')
    os.environ['ROS_LOG_DIR'] = str(log_dir)
    rclpy.init(args=[executable_name] + list(args))
    node = node_class()
    executor = MultiThreadedExecutor(num_threads=node.executor_threads)
    executor.add_node(node)
    node.start()
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while wait_ready and node.worker.state != 'ready':
            assert node.worker.state == 'loading' and time.monotonic() < deadline, \
                node.worker.load_error
            time.sleep(0.1)
        yield node
    finally:
        node.close()
        executor.shutdown(timeout_sec=1.0)
        server = getattr(getattr(node, '_stream', None), '_server', None)
        if server is not None:
            server.destroy()
        node.destroy_node()
        machine = getattr(node, '_state_machine', None)
        if machine is not None:
            machine.destroy_when_not_in_use()
        rclpy.try_shutdown()
        thread.join(2.0)
        if old_log_dir is None:
            os.environ.pop('ROS_LOG_DIR', None)
        else:
            os.environ['ROS_LOG_DIR'] = old_log_dir


@contextlib.contextmanager
def service_client(timeout: float = 30, **kwargs):
    """Yield a RosClient whose ~/describe service is available; close it afterwards."""
    c = RosClient(**kwargs)
    try:
        c.wait_for_service(timeout)
        yield c
    finally:
        c.close()


def run_node_once(args: list, log_dir: Path, timeout: float) -> tuple[int, str]:
    """Run describe_node until it exits by itself (a start-up failure); (exit code, output)."""
    node = NodeProcess(args, log_dir)
    rc = node.wait_exit(timeout)
    if rc is None:
        node.stop(signal.SIGKILL)
        raise AssertionError(f'describe_node did not exit within {timeout} s:\n{node.output()}')
    node.stop()
    return rc, node.output()


# -- the test side of the ROS graph ---------------------------------------------------------------
class RosClient:
    """An rclpy node in the test process, spun on a background thread."""

    def __init__(self, node_ns: str = f'/{NODE_NAME}', image_topic: str = '/image',
                 compressed: bool = False):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from qwen_vl_interfaces.msg import Description
        from qwen_vl_interfaces.srv import Describe
        from rcl_interfaces.srv import SetParameters
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image
        from std_msgs.msg import String

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node('qwen_vl_test_client', context=self.context)
        # the node's statuses are '<its fully qualified name>: <concern>' (README /diagnostics)
        self.status_prefix = f'{node_ns}: '
        self._cond = threading.Condition()
        self.texts: list = []
        self.stamped: list = []
        self.diagnostics: list = []
        n = self.node
        topic = image_topic + ('/compressed' if compressed else '')
        self.image_pub = n.create_publisher(CompressedImage if compressed else Image, topic,
                                            QoSProfile(depth=1,
                                                       reliability=ReliabilityPolicy.RELIABLE))
        n.create_subscription(String, f'{node_ns}/description', self._keep(self.texts), 50)
        n.create_subscription(Description, f'{node_ns}/description/stamped',
                              self._keep(self.stamped), 50)
        n.create_subscription(DiagnosticArray, '/diagnostics', self._keep(self.diagnostics), 10)
        self.describe_client = n.create_client(
            Describe, f'{node_ns}/describe',
            qos_profile=QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        self.params_client = n.create_client(SetParameters, f'{node_ns}/set_parameters')
        self._Describe = Describe
        self._SetParameters = SetParameters
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(n)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        from rclpy.executors import ExternalShutdownException
        try:
            self.executor.spin()
        except (ExternalShutdownException, Exception):  # noqa: BLE001 - ends with the context
            pass

    def _keep(self, store):
        def callback(msg):
            with self._cond:
                store.append(msg)
                self._cond.notify_all()
        return callback

    def wait_until(self, predicate, timeout: float, what: str = 'condition'):
        """Wait (bounded) until predicate() is truthy; return its value."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f'timed out after {timeout} s waiting for {what}')
                self._cond.wait(min(left, 0.1))

    def wait_for_service(self, timeout: float = 20.0) -> None:
        assert self.describe_client.wait_for_service(timeout_sec=timeout), \
            'the ~/describe service did not appear'
        assert self.params_client.wait_for_service(timeout_sec=timeout)

    def call_async(self, client, request):
        """Send a request; return (event, future): event is set when the answer came."""
        done = threading.Event()
        future = client.call_async(request)
        future.add_done_callback(lambda _: done.set())
        if future.done():
            done.set()
        return done, future

    def describe_request(self, prompt: str = '', image=None, max_new_tokens: int = 0):
        req = self._Describe.Request()
        req.prompt = prompt
        if image is not None:
            req.image = image
        req.max_new_tokens = max_new_tokens
        return req

    def describe(self, prompt: str = '', image=None, max_new_tokens: int = 0,
                 timeout: float = 30.0):
        done, future = self.call_async(self.describe_client,
                                       self.describe_request(prompt, image, max_new_tokens))
        assert done.wait(timeout), f'no ~/describe answer within {timeout} s'
        return future.result()

    def set_params(self, timeout: float = 10.0, **values) -> list:
        """Set parameters of the node; return the SetParametersResult list."""
        from rclpy.parameter import Parameter
        req = self._SetParameters.Request()
        req.parameters = [Parameter(k, value=v).to_parameter_msg() for k, v in values.items()]
        done, future = self.call_async(self.params_client, req)
        assert done.wait(timeout), 'no set_parameters answer'
        return list(future.result().results)

    def own_statuses(self, arr) -> list:
        """Return the statuses of ``arr`` (a DiagnosticArray) that the node under test sent.

        Only its own: a node of an earlier test still shutting down, or any other node in the
        domain, publishes on /diagnostics too.
        """
        return [st for st in arr.status if st.name.startswith(self.status_prefix)]

    def counters(self) -> dict:
        """Return the newest /diagnostics values of the node (empty when none arrived yet).

        The values of all its statuses (one per concern) in one dict.
        """
        with self._cond:
            for arr in reversed(self.diagnostics):
                values = {kv.key: kv.value for st in self.own_statuses(arr)
                          for kv in st.values}
                if values:
                    return values
        return {}

    def status(self, concern: str):
        """Return the newest DiagnosticStatus '<node>: <concern>' of the node, or None."""
        with self._cond:
            for arr in reversed(self.diagnostics):
                for st in self.own_statuses(arr):
                    if st.name.endswith(f': {concern}'):
                        return st
        return None

    def wait_counter(self, name: str, at_least: int, timeout: float = DIAGNOSTICS_WAIT_S) -> int:
        def ok():
            v = self.counters().get(name)
            return v is not None and int(v) >= at_least and int(v)
        try:
            return self.wait_until(ok, timeout, f'diagnostics {name} >= {at_least}')
        except AssertionError as e:     # say where it stopped: a rate problem or nothing at all
            raise AssertionError(f'{e}; last value: {self.counters().get(name)}') from None

    def close(self):
        import rclpy
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(2.0)


# -- images -----------------------------------------------------------------------------------
def picture(height: int = 120, width: int = 160, seed: int = 0, high: int = 230):
    """Return a deterministic RGB picture: gradients and blocks, values below ``high``."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 200 // max(1, width - 1), y * 200 // max(1, height - 1),
                    (x + y) * 100 // max(1, width + height)], axis=-1).astype(np.int32)
    for _ in range(4):
        r0, c0 = rng.integers(0, height // 2), rng.integers(0, width // 2)
        img[r0:r0 + height // 4, c0:c0 + width // 4] = rng.integers(0, high, 3)
    return np.clip(img, 0, high - 1).astype(np.uint8)


def _rgb_to_yuv(rgb):
    """BT.601 Y'CbCr (studio swing), what OpenCV's YUV422 conversions take."""
    f = rgb.astype(np.float32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    return [np.clip(np.rint(c), 0, 255).astype(np.uint8) for c in (y, u, v)]


_BAYER_OFFSETS = {'rggb': ((0, 0), (0, 1), (1, 0), (1, 1)),   # positions of R, G, G, B
                  'bggr': ((1, 1), (0, 1), (1, 0), (0, 0)),
                  'gbrg': ((1, 0), (0, 0), (1, 1), (0, 1)),
                  'grbg': ((0, 1), (0, 0), (1, 1), (1, 0))}


def encode(rgb, encoding: str, big_endian: bool = False, pad: int = 0):
    """Return (data bytes, step) of an HxWx3 RGB picture in ``encoding``, ``pad`` bytes per row."""
    h, w = rgb.shape[:2]
    e = encoding
    if e in ('rgb8', 'bgr8', 'rgba8', 'bgra8'):
        px = rgb if e.startswith('rgb') else rgb[..., ::-1]
        if e.endswith('a8'):
            px = np.concatenate([px, np.full((h, w, 1), 255, np.uint8)], axis=-1)
        rows = px.reshape(h, -1)
    elif e == 'mono8':
        rows = gray(rgb)
    elif e == 'mono16':
        g16 = gray(rgb).astype(np.uint16) * 257
        rows = g16.astype('>u2' if big_endian else '<u2').view(np.uint8).reshape(h, -1)
    elif e in ('yuyv', 'yuv422_yuy2', 'uyvy', 'yuv422'):
        y, u, v = _rgb_to_yuv(rgb)
        u2 = ((u[:, 0::2].astype(np.uint16) + u[:, 1::2]) // 2).astype(np.uint8)
        v2 = ((v[:, 0::2].astype(np.uint16) + v[:, 1::2]) // 2).astype(np.uint8)
        out = np.empty((h, w // 2, 4), np.uint8)
        if e in ('yuyv', 'yuv422_yuy2'):
            out[..., 0], out[..., 1], out[..., 2], out[..., 3] = y[:, 0::2], u2, y[:, 1::2], v2
        else:
            out[..., 0], out[..., 1], out[..., 2], out[..., 3] = u2, y[:, 0::2], v2, y[:, 1::2]
        rows = out.reshape(h, -1)
    elif e.startswith('bayer_'):
        pattern, bits = e[6:10], int(e[10:])
        mosaic = np.empty((h, w), np.uint8)
        (ry, rx), (g1y, g1x), (g2y, g2x), (by, bx) = _BAYER_OFFSETS[pattern]
        mosaic[ry::2, rx::2] = rgb[ry::2, rx::2, 0]
        mosaic[g1y::2, g1x::2] = rgb[g1y::2, g1x::2, 1]
        mosaic[g2y::2, g2x::2] = rgb[g2y::2, g2x::2, 1]
        mosaic[by::2, bx::2] = rgb[by::2, bx::2, 2]
        if bits == 16:
            m16 = mosaic.astype(np.uint16) * 257
            rows = m16.astype('>u2' if big_endian else '<u2').view(np.uint8).reshape(h, -1)
        else:
            rows = mosaic
    else:
        raise ValueError(f'no test encoder for {encoding}')
    if pad:
        rows = np.concatenate([rows, np.zeros((h, pad), np.uint8)], axis=1)
    rows = np.ascontiguousarray(rows)
    return rows.tobytes(), rows.shape[1]


def gray(rgb):
    return np.rint(rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)) \
        .clip(0, 255).astype(np.uint8)


def image_msg(rgb=None, encoding: str = 'rgb8', stamp=None, frame_id: str = 'camera',
              big_endian: bool = False, pad: int = 0, **fields):
    """Return a sensor_msgs/Image of ``rgb`` in ``encoding``; ``fields`` override fields."""
    from sensor_msgs.msg import Image
    rgb = picture() if rgb is None else rgb
    data, step = encode(rgb, encoding, big_endian, pad)
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding=encoding,
                is_bigendian=int(big_endian), step=step, data=data)
    msg.header.frame_id = frame_id
    if stamp is not None:
        msg.header.stamp = stamp
    for k, v in fields.items():
        setattr(msg, k, v)
    return msg


def compressed_msg(rgb=None, fmt: str = 'jpeg', stamp=None, frame_id: str = 'camera',
                   data: bytes | None = None):
    """Return a sensor_msgs/CompressedImage (JPEG or PNG) of ``rgb``, or with raw ``data``."""
    import cv2
    from sensor_msgs.msg import CompressedImage
    if data is None:
        rgb = picture() if rgb is None else rgb
        ok, buf = cv2.imencode('.jpg' if fmt == 'jpeg' else '.png',
                               cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        assert ok
        data = buf.tobytes()
    msg = CompressedImage(format=fmt, data=data)
    msg.header.frame_id = frame_id
    if stamp is not None:
        msg.header.stamp = stamp
    return msg


def stamp_of(seconds: float):
    from builtin_interfaces.msg import Time
    sec = int(seconds)
    return Time(sec=sec, nanosec=int(round((seconds - sec) * 1e9)) % 1_000_000_000)


def now_stamp(offset_s: float = 0.0):
    return stamp_of(time.time() + offset_s)


# -- a doctored model for the life-cycle tests --------------------------------------------------
def doctored_model(src: Path, dst: Path, slow_size: int = 0, fault_on_white: bool = False) -> Path:
    """Copy an ONNX stand-in directory (files linked), with models that misbehave on purpose.

    slow_size > 0: the post model (run once per generated token) also multiplies two
    slow_size x slow_size matrices (of zeros: the logits do not change), so that generation
    lasts long enough to be interrupted. fault_on_white: the vision model fails at run time
    (an out-of-range Gather, onnxruntime raises) when the first patch value is 255, e.g. for a
    white image; any other image gives the original features.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if not (dst / f.name).exists():
            (dst / f.name).symlink_to(f.resolve())

    def rewrite(name: str, build) -> None:
        model = onnx.load(str(src / name))
        g = model.graph
        out = g.output[0].name
        for node in g.node:
            node.output[:] = [o + '_orig' if o == out else o for o in node.output]
        extra, extra_inits = build(g.input[0].name)
        g.initializer.extend(extra_inits)
        g.node.extend(extra)
        g.node.append(helper.make_node('Add', [out + '_orig', 'doctor_zero'], [out]))
        (dst / name).unlink()
        onnx.save(model, str(dst / name))

    def slow(inp):
        k = slow_size
        inits = [numpy_helper.from_array(np.zeros((k, k), np.float32), 'doctor_w'),
                 numpy_helper.from_array(np.array([1, -1], np.int64), 'doctor_shape1'),
                 numpy_helper.from_array(np.array([k, k], np.int64), 'doctor_shape2')]
        nodes = [helper.make_node('Reshape', [inp, 'doctor_shape1'], ['doctor_row']),
                 helper.make_node('ReduceSum', ['doctor_row'], ['doctor_s'], keepdims=1),
                 helper.make_node('Expand', ['doctor_s', 'doctor_shape2'], ['doctor_x0'])]
        last = 'doctor_x0'
        for i in range(4):
            nodes.append(helper.make_node('MatMul', [last, 'doctor_w'], [f'doctor_x{i + 1}']))
            last = f'doctor_x{i + 1}'
        nodes.append(helper.make_node('ReduceSum', [last], ['doctor_zero'], keepdims=0))
        return nodes, inits

    def fault(inp):
        inits = [numpy_helper.from_array(np.zeros(255, np.float32), 'doctor_table'),
                 numpy_helper.from_array(np.array([0, 0, 0, 0], np.int64), 'doctor_starts'),
                 numpy_helper.from_array(np.array([1, 1, 1, 1], np.int64), 'doctor_ends'),
                 numpy_helper.from_array(np.array([1], np.int64), 'doctor_one')]
        nodes = [helper.make_node('Slice', [inp, 'doctor_starts', 'doctor_ends'], ['doctor_p']),
                 helper.make_node('Cast', ['doctor_p'], ['doctor_i'], to=TensorProto.INT64),
                 helper.make_node('Reshape', ['doctor_i', 'doctor_one'], ['doctor_idx']),
                 helper.make_node('Gather', ['doctor_table', 'doctor_idx'], ['doctor_g']),
                 helper.make_node('ReduceSum', ['doctor_g'], ['doctor_zero'], keepdims=0)]
        return nodes, inits

    if slow_size:
        rewrite('qwen2_5_vl_post.onnx', slow)
    if fault_on_white:
        vision = next(f.name for f in src.glob('qwen2_5_vl_vision_*.onnx'))
        rewrite(vision, fault)
    return dst
