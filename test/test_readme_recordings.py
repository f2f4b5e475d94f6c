"""The README's recording commands, read from README.md and run as written with bash.

"Replay into the running node": `. scripts/ros_env.sh`, describe_node in the background,
qwen-vl-replay into answers.jsonl; "Annotate a recording without ROS": qwen-vl-describe --bag.
$MODEL is the tiny model and my_bag a synthetic camera recording in the working directory.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys

import pytest

from ros2_cli import cli_env, readme_commands, run

pytest.importorskip('rosbags')

REPLAY = '### Replay into the running node: `qwen-vl-replay`'
ANNOTATE = '### Annotate a recording without ROS: `qwen-vl-describe --bag`'
pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def workdir(tmp_path):
    """Return a directory with my_bag (3 s of frames on /camera/image_raw) and scripts/."""
    import time

    from qwen_vl_ros.bagtools import write_camera_bag
    from ros2_cli import REPO
    # stamped ahead, so that no frame is older than max_image_age_s (5 s) by the time the node,
    # started by the same commands, has loaded its model (tens of seconds on a loaded machine;
    # a frame from the future has age 0)
    write_camera_bag(tmp_path / 'my_bag', frames=30, fps=10.0,
                     start_ns=time.time_ns() + 60_000_000_000)
    (tmp_path / 'scripts').symlink_to(REPO / 'scripts')
    return tmp_path


def _env(workdir, model):
    env = cli_env(workdir / 'log')
    # scripts/ros_env.sh keeps the test's venv and domain id
    env.update(MODEL=str(model), VENV=sys.prefix, QVR_ROS_DOMAIN_ID=os.environ['ROS_DOMAIN_ID'])
    return env


def test_replay_section(tiny_onnx_dir, workdir):
    commands = readme_commands(REPLAY)
    assert [c.split()[0] for c in commands] == ['.', 'describe_node', 'qwen-vl-replay'], commands
    assert commands[1].endswith('&')
    # the node goes on in the background: stop it (SIGTERM: a non-interactive shell's
    # background job ignores SIGINT) once the replay has ended
    script = '\n'.join(['set -e'] + commands[:2] + ['node=$!'] + commands[2:]
                       + ['kill -TERM $node', 'wait $node'])
    # in a process group of its own: when the script fails or times out before its `kill`,
    # the background node is killed with it instead of serving /qwen_vl to the later tests
    with open(workdir / 'script.log', 'wb') as log:
        proc = subprocess.Popen(['bash', '-c', script], env=_env(workdir, tiny_onnx_dir),
                                cwd=workdir, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(200)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out = (workdir / 'script.log').read_text(errors='replace')
    assert rc == 0, out[-4000:]
    lines = [json.loads(x) for x in (workdir / 'answers.jsonl').read_text().splitlines()]
    described = [x for x in lines if x['topic'] == '/qwen_vl/description/stamped']
    assert described, out[-4000:]
    assert all(d['msg']['trigger'] == 'timer' and d['msg']['header']['frame_id'] == 'camera'
               for d in described)
    assert any(x['topic'] == '/diagnostics' for x in lines)


def test_annotate_section(tiny_onnx_dir, workdir):
    (command,) = readme_commands(ANNOTATE)
    rc, out = run(command, _env(workdir, tiny_onnx_dir), cwd=workdir, timeout=200)
    assert rc == 0, out[-3000:]
    notes = [json.loads(x) for x in (workdir / 'notes.jsonl').read_text().splitlines()]
    # 3 s of recording, one frame every 2 s: offsets 0 and 2
    assert [n['offset_s'] for n in notes] == [0.0, 2.0], notes
    assert all(n['text'] is not None and n['topic'] == '/camera/image_raw' for n in notes)
