"""describe_managed_node driven through lifecycle_msgs services from rclpy, without the ros2 CLI.

So it runs in every test venv, Jazzy's rclpy 7.1 (`make test-jazzy`) included, where
test_managed_node.py (the `ros2 lifecycle` commands) is skipped. Configure, activate (serves),
deactivate ("not active (state inactive)" answers; services answer so from configure on),
cleanup (model released), shutdown (the process exits 0), and a configure that fails with the
reason and leaves the node unconfigured.
"""

import time
from pathlib import Path

import pytest

pytest.importorskip('rclpy')
pytest.importorskip('qwen_vl_interfaces')

import node_harness as harness  # noqa: E402
from ros2_cli import Background, cli_env  # noqa: E402
from test_managed_node import EMBEDDING, describe_once_a_frame_is_in  # noqa: E402
from test_ros2_cli import camera  # noqa: E402

pytestmark = pytest.mark.timeout(180)

EXECUTABLE = Path(harness.executable()).with_name('describe_managed_node')
INACTIVE = ('not active (state inactive): activate it with '
            '`ros2 lifecycle set /qwen_vl activate`')


class Lifecycle:
    """Calls /qwen_vl/change_state and /qwen_vl/get_state from a RosClient's node."""

    def __init__(self, client):
        from lifecycle_msgs.srv import ChangeState, GetState
        self.client = client
        self._change = client.node.create_client(ChangeState, '/qwen_vl/change_state')
        self._get = client.node.create_client(GetState, '/qwen_vl/get_state')
        self._ChangeState, self._GetState = ChangeState, GetState
        assert self._change.wait_for_service(30) and self._get.wait_for_service(30)

    def set(self, label: str, timeout: float = 60) -> bool:
        req = self._ChangeState.Request()
        req.transition.label = label
        done, future = self.client.call_async(self._change, req)
        assert done.wait(timeout), f'no answer to {label} within {timeout} s'
        return future.result().success

    def get(self) -> str:
        done, future = self.client.call_async(self._get, self._GetState.Request())
        assert done.wait(30)
        return future.result().current_state.label


def managed_node(tmp_path, *params) -> Background:
    args = ' '.join(f'-p {p}' for p in params)
    return Background(f'{EXECUTABLE} --ros-args {args}', cli_env(tmp_path / 'log'),
                      tmp_path / 'node.log')


def test_transitions(tiny_onnx_dir, tmp_path):
    node = managed_node(tmp_path, f'model_dir:={tiny_onnx_dir}', 'max_new_tokens:=4')
    try:
        node.wait_for('waiting for configure', 60)
        with camera('/image') as cam:
            life = Lifecycle(cam)
            assert life.get() == 'unconfigured'
            maps = Path(f'/proc/{node.proc.pid}/maps')
            assert EMBEDDING not in maps.read_text()
            assert life.set('configure') and life.get() == 'inactive'
            assert EMBEDDING in maps.read_text()
            answer = cam.describe('Anything?')        # served, refused until activate
            assert not answer.success and answer.message == INACTIVE, answer.message
            assert life.set('activate') and life.get() == 'active'
            node.wait_for(r'\]: ready: ', 30)
            answer = describe_once_a_frame_is_in(cam)
            assert answer.success, answer.message
            assert answer.description.generated_tokens == 4
            assert life.set('deactivate') and life.get() == 'inactive'
            answer = cam.describe('Anything?')
            assert not answer.success and answer.message == INACTIVE, answer.message
            assert life.set('cleanup') and life.get() == 'unconfigured'
            assert EMBEDDING not in maps.read_text()
            assert life.set('shutdown')
        assert node.wait_exit(15) == 0, node.output()[-3000:]
    finally:
        node.kill()


def test_configure_failure_names_the_reason_and_stays_unconfigured(tmp_path):
    node = managed_node(tmp_path, f'model_dir:={tmp_path}/no_model')
    try:
        node.wait_for('waiting for configure', 60)
        with camera('/image') as cam:
            life = Lifecycle(cam)
            assert life.set('configure') is False
            assert life.get() == 'unconfigured'
            node.wait_for(rf"configure failed, still unconfigured: cannot load the model from "
                          rf"'{tmp_path}/no_model'", 30)
            time.sleep(0.5)
            assert node.proc.poll() is None
        assert node.interrupt() == 0
    finally:
        node.kill()
