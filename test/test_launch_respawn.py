"""A real `ros2 launch` with respawn:=true brings the node back after a runtime hang.

The launch file's node runs through test/fault_node.py (`--launch-prefix`), whose first request
hangs inside the runtime; the node answers it "runtime hung", exits with code 3 after
hang_exit_s, and launch starts it again respawn_delay later; the new process serves.
Needs the ros2 CLI in the venv (bash ../shared/ros2cli/install.sh .venv): skipped without it.
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip('rclpy')
pytest.importorskip('qwen_vl_interfaces')

import node_harness as harness  # noqa: E402
from fault_runtime import ENV_PLAN, Fault, write_plan  # noqa: E402
from ros2_cli import terminal_signals  # noqa: E402

ROS2 = Path(sys.prefix) / 'bin' / 'ros2'
FAULT_NODE = Path(__file__).resolve().parent / 'fault_node.py'

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(not ROS2.exists(), reason=f'no ros2 CLI in {sys.prefix} (install it '
                       'with: bash ../shared/ros2cli/install.sh .venv)'),
]


def params_file(path: Path, model_dir: str) -> Path:
    """Write the installed describe.yaml with this test's values to ``path``."""
    src = harness.share_dir() / 'config' / harness.PARAMS_FILE
    doc = yaml.safe_load(src.read_text())
    p = doc['/**']['ros__parameters']
    p.update(model_dir=model_dir, threads=1, max_image_age_s=0.0, hang_timeout_s=2.0,
             hang_exit_s=1.0, request_timeout_s=60.0)
    path.write_text(yaml.safe_dump(doc))
    return path


def node_pids(session: int) -> list:
    """Pids of the node processes (running fault_node.py) in the session of ros2 launch."""
    out = []
    for d in Path('/proc').iterdir():
        if not d.name.isdigit() or int(d.name) == session:   # launch names it in its args
            continue
        try:
            if os.getsid(int(d.name)) != session:
                continue
            if 'fault_node.py' in (d / 'cmdline').read_bytes().decode(errors='replace'):
                out.append(int(d.name))
        except (OSError, ProcessLookupError):
            continue
    return out


def test_ros2_launch_respawns_the_node_after_a_hang(tiny_onnx_dir, tmp_path):
    plan = tmp_path / 'plan.json'
    write_plan(plan, Fault('hang', 'layer', 0, 2))
    env = harness.ros_env(tmp_path)
    env.update(PATH=f'{sys.prefix}/bin:{env.get("PATH", "")}',
               RMW_IMPLEMENTATION='rmw_fastrtps_cpp')
    env[ENV_PLAN] = str(plan)
    env.pop('_ROS_WHEELS_BOOTSTRAP_COMPLETE', None)
    cmd = [str(ROS2), 'launch', harness.PACKAGE, 'describe.launch.py',
           f'params_file:={params_file(tmp_path / "params.yaml", str(tiny_onnx_dir))}',
           'respawn:=true', 'respawn_delay:=1.0',
           '--launch-prefix', f'{sys.executable} {FAULT_NODE}']
    log_path = tmp_path / 'launch.log'
    with open(log_path, 'wb') as log:
        launch = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                  preexec_fn=terminal_signals)

    def output():
        return log_path.read_text(errors='replace')

    def wait_for(pattern, count=1, timeout=90):
        deadline = time.monotonic() + timeout
        while len(re.findall(pattern, output())) < count:
            assert launch.poll() is None, f'ros2 launch exited {launch.returncode}:\n{output()}'
            assert time.monotonic() < deadline, f'no {pattern!r} x{count}:\n{output()[-4000:]}'
            time.sleep(0.1)

    try:
        wait_for(harness.READY.pattern)
        first = set(node_pids(launch.pid))   # (the wheels' bootstrapper may add a parent)
        assert first
        with harness.service_client() as client:
            img = harness.image_msg(harness.picture(seed=1))
            r = client.describe(image=img, max_new_tokens=8, timeout=30)
            assert not r.success and r.message.startswith('runtime hung: '), r.message
            wait_for(r'process has died \[pid \d+, exit code 3')
            wait_for(harness.READY.pattern, count=2)
            second = set(node_pids(launch.pid))
            assert second and not second & first, (first, second)
            client.wait_for_service(30)
            r = client.describe(image=img, max_new_tokens=8, timeout=30)
            assert r.success, r.message
    finally:
        if launch.poll() is None:
            os.killpg(launch.pid, signal.SIGINT)   # what Ctrl-C does: launch stops its nodes
            try:
                launch.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(launch.pid, signal.SIGKILL)
                launch.wait(5)
    assert launch.returncode == 0, output()[-3000:]
    assert not node_pids(launch.pid), 'a node process outlived ros2 launch'
