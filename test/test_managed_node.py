"""describe_managed_node through its lifecycle with the real `ros2 lifecycle` and `ros2 launch`.

The README section "Managed (lifecycle) node" is run command by command (read from README.md):
describe_managed.launch.py configures and activates the node with launch_ros' lifecycle events;
deactivate stops serving ("not active (state inactive)" answers); cleanup releases the model
(its memory-mapped embedding table leaves the process's address space); configure loads it
again; activate serves again; shutdown ends the process and with it the launch. A configure
that cannot load the model fails with the reason and leaves the node unconfigured and alive.

Needs the `ros2` tool in the venv (`make test` installs it from ../shared/ros2cli when the folder
exists); skipped with that reason otherwise.
"""

import time
from pathlib import Path

import pytest

from ros2_cli import (NO_ROS2, README_MODEL_DIR, ROS2, Background, alive, cli_env, node_pid,
                      readme_commands, run, stop_daemon, wait_lifecycle_node)
from test_ros2_cli import camera

pytestmark = [pytest.mark.skipif(not ROS2.exists(), reason=NO_ROS2), pytest.mark.timeout(300)]

SECTION = '### Managed (lifecycle) node'
EXECUTABLE = 'describe_managed_node'
# the model's memory-mapped embedding table: in the address space while the model is loaded
EMBEDDING = 'model.embed_tokens.weight'


def model_mapped(pid: int) -> bool:
    return EMBEDDING in Path(f'/proc/{pid}/maps').read_text()


def service_listed(env, name: str = '/qwen_vl/describe') -> bool:
    """Whether `ros2 service list` has the service, once it lists the node's lifecycle ones."""
    deadline = time.monotonic() + 30
    while True:
        rc, out = run('ros2 service list', env)
        if rc == 0 and '/qwen_vl/get_state' in out.split():
            return name in out.split()
        assert time.monotonic() < deadline, f'the node\'s services are not listed: {out}'
        time.sleep(0.5)


def state(env) -> str:
    rc, out = run('ros2 lifecycle get /qwen_vl', env)
    assert rc == 0, out
    return out.strip()


def describe_once_a_frame_is_in(cam, timeout: float = 30):
    """Call ~/describe until the node has a frame from the camera (a new subscription)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = cam.describe('What changed?', max_new_tokens=4, timeout=60)
        if not answer.message.startswith('no image') or time.monotonic() > deadline:
            return answer
        time.sleep(0.5)


def test_readme_lifecycle_commands(tiny_onnx_dir, tmp_path):
    commands = readme_commands(SECTION)
    assert commands[0].startswith('ros2 launch qwen_vl_ros describe_managed.launch.py')
    assert README_MODEL_DIR in commands[0]
    env = cli_env(tmp_path / 'log')
    launch = Background(commands[0].replace(README_MODEL_DIR, str(tiny_onnx_dir)), env,
                        tmp_path / 'launch.log')
    try:
        # configure (model loaded), then activate: the "ready" line comes on activate
        launch.wait_for(r'configured: model loaded in', 120)
        launch.wait_for(r'\]: ready: ', 60)
        pid = node_pid(launch.output(), EXECUTABLE)
        assert model_mapped(pid)
        wait_lifecycle_node(env, '/qwen_vl')
        with camera('/camera/color/image_raw') as cam:
            checked = []
            for command in commands[1:]:
                rc, out = run(command, env, timeout=120)
                assert rc == 0, f'{command!r}: exit {rc}\n{out}'
                verb = command.split()[2]
                if command.startswith('ros2 lifecycle get'):
                    assert out.strip() == 'active [3]', out
                elif command.startswith('ros2 lifecycle set'):
                    assert 'Transitioning successful' in out, f'{command!r}: {out}'
                    transition = command.split()[-1]
                    after = {'deactivate': 'inactive [2]', 'cleanup': 'unconfigured [1]',
                             'configure': 'inactive [2]', 'activate': 'active [3]'}
                    if transition == 'shutdown':
                        rc = launch.wait_exit(30)
                        assert rc == 0, f'launch: {rc}\n{launch.output()[-3000:]}'
                        assert not alive(pid)
                        assert 'process has finished cleanly' in launch.output()
                    else:
                        assert state(env) == after[transition]
                    if transition == 'cleanup':
                        assert not model_mapped(pid), 'the model is still mapped after cleanup'
                        # (`ros2 service list` would list it: the test's client names it)
                        deadline = time.monotonic() + 10
                        while cam.describe_client.service_is_ready() and \
                                time.monotonic() < deadline:
                            time.sleep(0.2)
                        assert not cam.describe_client.service_is_ready(), \
                            '~/describe still served after cleanup'
                    elif transition == 'configure':
                        assert model_mapped(pid)
                    elif transition == 'activate':
                        launch.wait_for(r'\]: ready: ', 30, start=launch.output().rfind(
                            'configured: model loaded'))
                        answer = describe_once_a_frame_is_in(cam)
                        assert answer.success, answer.message
                        assert answer.description.generated_tokens == 4
                elif command.startswith('ros2 service call'):
                    # the README calls it while the node is inactive
                    assert 'success=False' in out and (
                        "message='not active (state inactive): activate it with "
                        "`ros2 lifecycle set /qwen_vl activate`'") in out, out
                else:
                    raise AssertionError(f'README {SECTION!r}: no check for {command!r}')
                checked.append(verb)
        assert checked == ['get', 'set', 'call', 'set', 'set', 'set', 'set'], checked
    finally:
        launch.interrupt()
        stop_daemon(env)


def test_configure_failure_leaves_the_node_unconfigured(tiny_onnx_dir, tmp_path):
    """autostart:=false; a configure without a model fails with the reason; SIGINT exits 0."""
    env = cli_env(tmp_path / 'log')
    launch = Background('ros2 launch qwen_vl_ros describe_managed.launch.py autostart:=false '
                        f'model_dir:={tmp_path}/no_model', env, tmp_path / 'launch.log')
    try:
        launch.wait_for(r'unconfigured: managed node, waiting for configure', 60)
        wait_lifecycle_node(env, '/qwen_vl')
        assert state(env) == 'unconfigured [1]'
        rc, out = run('ros2 lifecycle set /qwen_vl configure', env, timeout=60)
        assert 'Transitioning failed' in out, out
        launch.wait_for(rf"configure failed, still unconfigured: cannot load the model from "
                        rf"'{tmp_path}/no_model'", 30)
        assert state(env) == 'unconfigured [1]'
        assert launch.proc.poll() is None
        assert not service_listed(env)
        pid = node_pid(launch.output(), EXECUTABLE)
        rc = launch.interrupt()
        assert rc == 0, launch.output()[-3000:]
        assert not alive(pid)
    finally:
        launch.kill()
        stop_daemon(env)


def test_sigint_while_active_exits_cleanly(tiny_onnx_dir, tmp_path):
    """describe_managed_node started directly, driven to active by the CLI, stopped by SIGINT."""
    env = cli_env(tmp_path / 'log')
    node = Background(f'{EXECUTABLE} --ros-args -p model_dir:={tiny_onnx_dir} '
                      '-p period_s:=0.5 -p max_new_tokens:=2', env, tmp_path / 'node.log')
    try:
        node.wait_for('waiting for configure', 60)
        wait_lifecycle_node(env, '/qwen_vl')
        for transition in ('configure', 'activate'):
            rc, out = run(f'ros2 lifecycle set /qwen_vl {transition}', env, timeout=60)
            assert 'Transitioning successful' in out, out
        with camera('/image') as client:
            client.wait_until(lambda: client.texts, 30, 'a timer description')
        rc = node.interrupt()
        assert rc == 0, node.output()[-3000:]
    finally:
        node.kill()
        stop_daemon(env)
