"""/diagnostics 'model' while the model loads and after it failed to load, from real nodes.

The load is made slow the test-only way: test/fault_node.py with QVR_FAULT_LOAD_DELAY_S (every
Pipeline.load sleeps first, as on an NPU whose models take long to load); nothing of ROS is
mocked, a client node reads /diagnostics as an operator's tools do.

- describe_node: "loading <model_dir>" at WARN while it loads; a load that fails ends the
  process with code 1, and its last /diagnostics says "failed" at ERROR with the reason (the
  1 Hz report would often not come before the exit);
- describe_managed_node: configure = loading at WARN (lifecycle_state configuring), then
  inactive; a configure that fails leaves the node up and unconfigured, reporting "failed" at
  ERROR with the reason and what to do, until the next configure.
"""

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip('rclpy')
pytest.importorskip('qwen_vl_interfaces')

import node_harness as harness  # noqa: E402
from fault_runtime import ENV_PLAN  # noqa: E402

pytestmark = pytest.mark.timeout(180)

FAULT_NODE = Path(__file__).resolve().parent / 'fault_node.py'
MANAGED = Path(harness.executable()).with_name('describe_managed_node')
LOAD_DELAY_S = 5.0
UNCONFIGURED = ('not active (state unconfigured): no model loaded; configure and activate it '
                'with `ros2 lifecycle set /qwen_vl configure`, then '
                '`ros2 lifecycle set /qwen_vl activate`')
INACTIVE = 'not active (state inactive): activate it with `ros2 lifecycle set /qwen_vl activate`'


class SlowLoadNode(harness.NodeProcess):
    """describe_node (or describe_managed_node) through fault_node.py, its load delayed."""

    def __init__(self, args: list, log_dir: Path, delay_s: float, managed: bool = False):
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / 'node.log'
        self.cmd = [sys.executable, str(FAULT_NODE)] + ([str(MANAGED)] if managed else []) + \
            list(args)
        env = harness.ros_env(log_dir)
        env[ENV_PLAN] = str(log_dir / 'plan.json')     # no plan file: no runtime faults
        env['QVR_FAULT_LOAD_DELAY_S'] = str(delay_s)
        self._log = open(self.log_path, 'wb')
        self.proc = subprocess.Popen(
            self.cmd, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env, start_new_session=True)


def wait_model(client, level, words: str, timeout: float):
    """Return the first 'model' status at ``level`` whose message starts with ``words``."""
    def found():
        st = client.status('model')
        return st if st is not None and st.level == level and \
            st.message.startswith(words) else None
    try:
        return client.wait_until(found, timeout, f'model status {words!r}')
    except AssertionError as e:
        st = client.status('model')
        raise AssertionError(f'{e}; last: {(st.level, st.message) if st else None}') from None


def values(st) -> dict:
    return {kv.key: kv.value for kv in st.values}


def logged_reason(output: str, model_dir) -> str:
    """Return the reason the node logged for the failed load (after the exception's class name)."""
    m = re.search(rf"cannot load the model from '{re.escape(str(model_dir))}': \w+: (.*)",
                  output)
    assert m, output[-3000:]
    return m.group(1).strip()


def test_describe_node_says_loading_then_failed_with_the_reason(tmp_path):
    from diagnostic_msgs.msg import DiagnosticStatus as S
    model_dir = tmp_path / 'no_model'
    node = SlowLoadNode(harness.launch_arguments(model_dir=str(model_dir)), tmp_path,
                        LOAD_DELAY_S)
    client = harness.RosClient()
    try:
        node.wait_for_log('fault_runtime: model load delayed', 60)
        st = wait_model(client, S.WARN, f'loading {model_dir} (', LOAD_DELAY_S + 10)
        assert 'requests are refused until it is ready' in st.message
        v = values(st)
        assert v['state'] == 'loading' and v['model_dir'] == str(model_dir)
        st = wait_model(client, S.ERROR, 'failed: the model did not load: ', LOAD_DELAY_S + 20)
        assert node.wait_exit(30) == 1, node.output()[-3000:]
        reason = logged_reason(node.output(), model_dir)
        assert str(model_dir) in reason
        assert st.message == f'failed: the model did not load: {reason}'
        assert values(st)['state'] == 'failed' and values(st)['model_dir'] == str(model_dir)
    finally:
        client.close()
        node.stop(signal.SIGKILL)


def test_managed_configure_says_loading_then_inactive(tiny_onnx_dir, tmp_path):
    from diagnostic_msgs.msg import DiagnosticStatus as S
    from lifecycle_msgs.srv import ChangeState
    from test_managed_node_rclpy import Lifecycle
    node = SlowLoadNode(harness.launch_arguments(model_dir=str(tiny_onnx_dir)), tmp_path,
                        LOAD_DELAY_S, managed=True)
    client = harness.RosClient()
    try:
        node.wait_for_log('waiting for configure', 60)
        life = Lifecycle(client)
        req = ChangeState.Request()
        req.transition.label = 'configure'
        done, future = client.call_async(life._change, req)
        st = wait_model(client, S.WARN, f'loading {tiny_onnx_dir} (', LOAD_DELAY_S + 10)
        v = values(st)
        assert v['state'] == 'loading' and v['lifecycle_state'] == 'configuring'
        assert v['model_dir'] == str(tiny_onnx_dir)
        assert not done.is_set(), 'configure answered while the model was still loading'
        assert done.wait(LOAD_DELAY_S + 60) and future.result().success
        st = wait_model(client, S.WARN, INACTIVE, 10)
        assert st.message == INACTIVE and values(st)['lifecycle_state'] == 'inactive'
        assert life.set('activate')
        st = wait_model(client, S.OK, 'ready: onnxruntime on CPUExecutionProvider, model ', 30)
        assert values(st)['lifecycle_state'] == 'active'
        assert node.stop(signal.SIGINT, 20)[0] == 0, node.output()[-3000:]
    finally:
        client.close()
        node.stop(signal.SIGKILL)


def test_managed_failed_configure_says_failed_at_error_and_stays_up(tmp_path):
    from diagnostic_msgs.msg import DiagnosticStatus as S
    from test_managed_node_rclpy import Lifecycle
    model_dir = tmp_path / 'no_model'
    node = SlowLoadNode(harness.launch_arguments(model_dir=str(model_dir)), tmp_path, 0.0,
                        managed=True)
    client = harness.RosClient()
    try:
        node.wait_for_log('waiting for configure', 60)
        life = Lifecycle(client)
        st = wait_model(client, S.WARN, UNCONFIGURED, 15)     # before any configure
        assert values(st)['state'] == 'unconfigured'
        assert life.set('configure') is False and life.get() == 'unconfigured'
        reason = logged_reason(node.output(), model_dir)
        assert str(model_dir) in reason
        st = wait_model(client, S.ERROR, 'failed: the model did not load: ', 10)
        assert st.message == f'failed: the model did not load: {reason}; {UNCONFIGURED}'
        v = values(st)
        assert v['state'] == 'failed' and v['lifecycle_state'] == 'unconfigured'
        assert v['model_dir'] == str(model_dir)
        inference = client.status('inference')
        assert inference.level == S.ERROR and 'the model did not load' in inference.message
        time.sleep(1.5)                   # it stays so, and the node stays up
        assert client.status('model').level == S.ERROR and node.proc.poll() is None
        assert node.stop(signal.SIGINT, 20)[0] == 0, node.output()[-3000:]
    finally:
        client.close()
        node.stop(signal.SIGKILL)
