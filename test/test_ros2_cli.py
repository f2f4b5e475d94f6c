"""The README's usage commands, run with the real ros2 command line as a user types them.

`ros2 launch qwen_vl_ros describe.launch.py ...` with each launch argument, `ros2 run`,
`ros2 service call`, `ros2 param get/set`, `ros2 topic echo`, Ctrl-C (SIGINT to the launch's
process group), and a model that does not load. The commands of the README sections "Run on a
PC (no NPU)" and "Examples" are read from README.md (ros2_cli.readme_commands) and each is run;
a README command no test knows how to check fails test_every_readme_command_is_checked.

Needs the `ros2` tool in the venv (`make test` installs it from ../shared/ros2cli when the
folder exists); skipped with that reason otherwise (test_launch.py's ast checks still run).
"""

import contextlib
import threading
import time

import pytest

import node_harness as harness
from ros2_cli import (NO_ROS2, README_MODEL_DIR, ROS2, Background, alive, cli_env, node_pid,
                      readme_commands, run, stop_daemon, wait_node_visible)

pytestmark = [pytest.mark.skipif(not ROS2.exists(), reason=NO_ROS2), pytest.mark.timeout(300)]

PC_SECTION = '## Run on a PC (no NPU)'
EXAMPLES_SECTION = '### Examples'
READY = r'\]: ready: '
# The README's pip line is what `make install` runs before the tests (pip install of this
# package into the venv); running it again here would reinstall the venv's packages.
PIP_LINE = "pip install '.[export]'"
# ... and the CPU torch wheel it asks for first is in requirements.txt (torch==2.13.0+cpu).
TORCH_LINE = 'pip install torch==2.13.0'


def _checked(command: str) -> bool:
    """Whether a README command is one these tests know how to run and check."""
    return command.startswith(('ros2 launch qwen_vl_ros', 'ros2 param set', 'ros2 service call',
                               'ros2 topic echo', 'qwen-vl-export', 'qwen-vl-describe',
                               'python3 scripts/link_ros_executables.py', 'ros2 lifecycle',
                               PIP_LINE, TORCH_LINE))


def test_every_readme_command_is_checked():
    for section in (PC_SECTION, EXAMPLES_SECTION):
        commands = readme_commands(section)
        assert commands, f'no commands found in README section {section!r}'
        for command in commands:
            assert _checked(command), f'README {section!r}: no test runs {command!r}'
    assert any(c.startswith(PIP_LINE) for c in readme_commands(PC_SECTION))


@contextlib.contextmanager
def camera(topic: str, compressed: bool = False, period_s: float = 0.2,
           node_ns: str = f'/{harness.NODE_NAME}'):
    """Publish fresh frames on ``topic`` (its /compressed sub-topic) from a thread.

    The client reads the /diagnostics of the node ``node_ns`` (its fully qualified name).
    """
    client = harness.RosClient(node_ns=node_ns, image_topic=topic, compressed=compressed)
    stop = threading.Event()

    def loop():
        i = 0
        while not stop.is_set():
            rgb = harness.picture(seed=i % 4)
            msg = (harness.compressed_msg(rgb, stamp=harness.now_stamp()) if compressed
                   else harness.image_msg(rgb, stamp=harness.now_stamp()))
            client.image_pub.publish(msg)
            i += 1
            stop.wait(period_s)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield client
    finally:
        stop.set()
        thread.join(5)
        client.close()


@contextlib.contextmanager
def launched(command: str, env: dict, log_path, ready: str = READY, timeout: float = 120):
    """`ros2 launch ...` in its own process group until the node is ready; Ctrl-C at the end."""
    launch = Background(command, env, log_path)
    try:
        launch.wait_for(ready, timeout)
        yield launch
    finally:
        launch.interrupt()


def _ended_cleanly(launch: Background, executable: str = harness.EXECUTABLE) -> None:
    """Ctrl-C: the launch exits 0, the node finished cleanly and is gone."""
    pid = node_pid(launch.output(), executable)
    rc = launch.interrupt()
    out = launch.output()
    assert rc == 0, f'ros2 launch exited with {rc} after SIGINT:\n{out[-3000:]}'
    assert 'process has finished cleanly' in out, out[-3000:]
    assert not alive(pid), f'{executable} (pid {pid}) still runs after the launch ended'


def test_run_on_a_pc_section(tiny_hf_dir, tmp_path):
    """pip/link, qwen-vl-export, qwen-vl-describe and ros2 launch, as the README writes them.

    HOME is a fresh directory whose ~/models/Qwen2.5-VL-3B-Instruct is the tiny checkpoint, so
    the README's paths are used unchanged.
    """
    import cv2
    home = tmp_path / 'home'
    (home / 'models').mkdir(parents=True)
    (home / 'models' / 'Qwen2.5-VL-3B-Instruct').symlink_to(tiny_hf_dir)
    work = tmp_path / 'work'
    work.mkdir()
    cv2.imwrite(str(work / 'photo.jpg'), harness.picture(240, 320)[:, :, ::-1])
    env = cli_env(tmp_path / 'log', home)
    ran = []
    for command in readme_commands(PC_SECTION):
        if command.startswith((PIP_LINE, TORCH_LINE)):
            continue                    # make install ran it (see PIP_LINE)
        if command.startswith('ros2 launch'):
            with launched(command, env, tmp_path / 'launch.log') as launch:
                assert 'backend onnxruntime' in launch.output() or \
                    'onnxruntime' in launch.output()
                _ended_cleanly(launch)
        else:
            cwd = harness.REPO if command.startswith('python3 scripts/') else work
            rc, out = run(command, env, cwd=cwd, timeout=600)
            assert rc == 0, f'{command!r} exited with {rc}:\n{out[-3000:]}'
            if command.startswith('qwen-vl-describe'):
                assert out.strip(), 'qwen-vl-describe printed no description'
        ran.append(command.split()[0])
    assert (home / 'models' / 'qwen-vl-onnx' / 'config.json').is_file()
    assert ran == ['python3', 'qwen-vl-export', 'qwen-vl-describe', 'ros2'], ran


def test_examples_section(tiny_onnx_dir, tmp_path):
    """The Examples commands in a namespace, with frames on the README's camera topic.

    The launch line's model directory is the tiny model; the rest is run unchanged. The timer
    description that `ros2 topic echo` prints carries the prompt set with `ros2 param set`.
    """
    commands = readme_commands(EXAMPLES_SECTION)
    launch_line = commands[0]
    assert launch_line.startswith('ros2 launch qwen_vl_ros describe.launch.py')
    assert README_MODEL_DIR in launch_line and 'namespace:=front' in launch_line
    env = cli_env(tmp_path / 'log')
    try:
        with launched(launch_line.replace(README_MODEL_DIR, str(tiny_onnx_dir)), env,
                      tmp_path / 'launch.log') as launch, \
                camera('/camera/color/image_raw', node_ns='/front/qwen_vl') as cam:
            wait_node_visible(env, '/front/qwen_vl')
            cam.wait_counter('frames_received', 1, timeout=30)
            prompt = None
            for command in commands[1:]:
                if command.startswith('ros2 topic echo'):
                    echo = Background(command, env, tmp_path / 'echo.log')
                    try:
                        # the period set above is 5 s: a description within two periods
                        m = echo.wait_for(r'text: (.+)', 40)
                        echo.wait_for(r'\n---', 10)
                        out = echo.output()
                    finally:
                        echo.interrupt()
                    assert m.group(1).strip(" '\"")
                    assert "trigger: timer" in out, out
                    assert f'prompt: {prompt}' in out, out
                    continue
                rc, out = run(command, env, timeout=120)
                assert rc == 0, f'{command!r}: exit {rc}\n{out}'
                if command.startswith('ros2 param set'):
                    assert 'Set parameter successful' in out, f'{command!r}: {out}'
                    if ' prompt ' in command:
                        prompt = command.split(' prompt ', 1)[1].strip('"\'')
                elif command.startswith('ros2 service call'):
                    assert 'success=True' in out, f'{command!r}: {out}'
                    assert "prompt='Is the door open?'" in out, out
            # ros2 param get, and a read-only parameter refused while the node keeps serving
            rc, out = run('ros2 param get /front/qwen_vl period_s', env)
            assert 'Double value is: 5.0' in out, out
            rc, out = run('ros2 param set /front/qwen_vl model_dir /tmp', env)
            assert 'Setting parameter failed' in out and 'read-only' in out, out
            rc, out = run('ros2 param get /front/qwen_vl model_dir', env)
            assert f'String value is: {tiny_onnx_dir}' in out, out
            assert launch.proc.poll() is None
            _ended_cleanly(launch)
    finally:
        stop_daemon(env)


def test_launch_arguments_params_file_and_compressed_remap(tiny_onnx_dir, tmp_path):
    """params_file (compressed transport), image_topic remapped to <topic>/compressed, backend.

    npu_provider / npu_device (ignored by onnxruntime) reach the node with their types (an
    integer parameter given a string would stop it at start).
    """
    params = tmp_path / 'my.yaml'
    params.write_text('/**:\n  ros__parameters:\n    image_transport: compressed\n'
                      '    max_new_tokens: 5\n    prompt: "What is on the table?"\n')
    env = cli_env(tmp_path / 'log')
    command = (f'ros2 launch qwen_vl_ros describe.launch.py params_file:={params} '
               f'model_dir:={tiny_onnx_dir} backend:=onnxruntime image_topic:=/cam/front '
               'npu_provider:=AXCLRTExecutionProvider npu_device:=1')
    try:
        with launched(command, env, tmp_path / 'launch.log') as launch, \
                camera('/cam/front', compressed=True) as cam:
            cam.wait_counter('frames_received', 1, timeout=30)
            out = launch.output()
            assert 'image topic /cam/front/compressed (compressed' in out, out[-2000:]
            assert "(backend onnxruntime)" in out, out[-2000:]
            rc, out = run('ros2 service call /qwen_vl/describe qwen_vl_interfaces/srv/Describe '
                          '"{}"', env, timeout=60)
            assert 'success=True' in out, out
            assert "prompt='What is on the table?'" in out and 'generated_tokens=5' in out, out
            _ended_cleanly(launch)
    finally:
        stop_daemon(env)


def test_launch_ends_with_the_nodes_error_when_the_model_does_not_load(tmp_path):
    env = cli_env(tmp_path / 'log')
    launch = Background('ros2 launch qwen_vl_ros describe.launch.py '
                        f'model_dir:={tmp_path}/no_model backend:=onnxruntime', env,
                        tmp_path / 'launch.log')
    try:
        rc = launch.wait_exit(90)
        out = launch.output()
        assert rc is not None, f'the launch did not end by itself:\n{out[-3000:]}'
        errors = [line for line in out.splitlines() if 'cannot load the model from' in line]
        assert len(errors) == 1, out[-3000:]
        assert f"'{tmp_path}/no_model'" in errors[0]
        assert 'process has died' in out and 'exit code 1' in out, out[-3000:]
    finally:
        launch.kill()


def test_ros2_run_and_ctrl_c(tiny_onnx_dir, tmp_path):
    env = cli_env(tmp_path / 'log')
    node = Background(f'ros2 run qwen_vl_ros describe_node --ros-args -p '
                      f'model_dir:={tiny_onnx_dir} -p backend:=onnxruntime', env,
                      tmp_path / 'run.log')
    try:
        node.wait_for(READY, 90)
        t0 = time.monotonic()
        rc = node.interrupt()
        assert rc == 0, node.output()[-2000:]
        assert time.monotonic() - t0 < 10
        assert 'stopped (' in node.output()
    finally:
        node.kill()
