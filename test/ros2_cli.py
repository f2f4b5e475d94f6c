"""Helpers of the ros2 command-line tests: README commands, the `ros2` tool, `ros2 launch`.

The README's shell commands are read from the README itself (``readme_commands``), never copied
into a test, and run with bash in the environment a user would have: the venv's bin/ first on
PATH, the venv as AMENT_PREFIX_PATH, loopback DDS and the test run's domain id (conftest.py).

`ros2 launch` is started in a process group of its own and stopped as Ctrl-C stops it: SIGINT
to the whole group (shared/ros2cli/README.md: SIGTERM would leave the node running).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import node_harness as harness

REPO = Path(__file__).resolve().parents[1]
README = REPO / 'README.md'
ROS2 = Path(sys.prefix) / 'bin' / 'ros2'
NO_ROS2 = (f'the ros2 command line is not installed in {sys.prefix}: `make test` installs it '
           'into .venv (Kilted) from ../shared/ros2cli when that folder exists; a user\'s '
           'clone and the other test venvs have none')
# What the README writes for a model directory on a robot; the tests put the tiny model there.
README_MODEL_DIR = '/opt/models/qwen2.5-vl'


def readme_commands(heading: str) -> list:
    """Return the commands of the ```sh blocks of the README section ``heading``.

    The section runs from the heading line (e.g. '### Examples') to the next heading of the
    same or a higher level. Backslash continuations are joined; blank lines dropped; comments
    are left to bash.
    """
    lines = README.read_text().splitlines()
    level = len(heading) - len(heading.lstrip('#'))
    start = lines.index(heading) + 1
    end = len(lines)
    for i in range(start, len(lines)):
        m = re.match(r'(#+) ', lines[i])
        if m and len(m.group(1)) <= level:
            end = i
            break
    commands, in_block, pending = [], False, ''
    for line in lines[start:end]:
        if line.startswith('```'):
            in_block = line.strip() == '```sh'
            continue
        if not in_block:
            continue
        text = pending + line.strip()
        if text.endswith('\\'):
            pending = text[:-1].rstrip() + ' '
            continue
        pending = ''
        if text and not text.startswith('#'):
            commands.append(text)
    return commands


def cli_env(log_dir: Path, home: Path | None = None) -> dict:
    """Return a user's shell environment: node_harness.ros_env, the venv's bin/ on PATH."""
    env = harness.ros_env(log_dir)
    env['PATH'] = f'{Path(sys.prefix) / "bin"}{os.pathsep}{env.get("PATH", "")}'
    env['ROS_HOME'] = str(log_dir)
    if home is not None:
        env['HOME'] = str(home)
    return env


def run(command: str, env: dict, cwd=None, timeout: float = 60) -> tuple[int, str]:
    """Run one shell command with bash; (exit code, stdout + stderr)."""
    p = subprocess.run(['bash', '-c', command], env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    return p.returncode, p.stdout.decode(errors='replace')


def terminal_signals() -> None:
    """preexec_fn: SIGINT handled as in a terminal, whatever the test runner inherited.

    A background job of a non-interactive shell (CI started with `&`) has SIGINT ignored, and
    the children inherit that: `ros2 launch` then never sees Ctrl-C (a respawned node is started
    again instead of stopped). Seen in a clean-clone run.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Background:
    """A shell command in its own process group (as a terminal runs it), output to a file."""

    def __init__(self, command: str, env: dict, log_path: Path, cwd=None):
        self.command = command
        self.log_path = log_path
        self._log = open(log_path, 'wb')
        self.proc = subprocess.Popen(['bash', '-c', 'exec ' + command], env=env, cwd=cwd,
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=terminal_signals)

    def output(self) -> str:
        return self.log_path.read_text(errors='replace')

    def wait_for(self, pattern: str, timeout: float, start: int = 0) -> re.Match:
        """Wait until ``pattern`` appears in the output (after character ``start``)."""
        return harness.wait_for_output(self, pattern, timeout, start, repr(self.command))

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def interrupt(self, timeout: float = 20) -> int | None:
        """Ctrl-C: SIGINT to the process group; the exit code (None: had to be killed)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        rc = self.wait_exit(timeout)
        self.kill()
        return rc

    def kill(self) -> None:
        """SIGKILL whatever is left of the group (a failed test must not leave nodes behind)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(10)
        self._log.close()


def node_pid(launch_output: str, executable: str) -> int:
    """Return the pid `ros2 launch` reports for the node ('process started with pid [N]')."""
    m = re.search(rf'\[{re.escape(executable)}-\d+\]: process started with pid \[(\d+)\]',
                  launch_output)
    assert m, f'no pid of {executable} in the launch output:\n{launch_output[-3000:]}'
    return int(m.group(1))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purpose
    try:
        return Path(f'/proc/{pid}/stat').read_text().split(') ')[1][0] != 'Z'
    except (FileNotFoundError, IndexError):
        return False


def _wait_listed(env: dict, command: str, fq_name: str, timeout: float) -> None:
    """Wait until ``command`` (a daemon-backed listing) names ``fq_name``.

    The daemon is started first: the command that spawns it discovers the graph itself, and the
    next one asks a daemon that has not yet (shared/ros2cli/README.md: 1-3 s of discovery).
    """
    run('ros2 daemon start', env, timeout=30)
    deadline = time.monotonic() + timeout
    out = ''
    while time.monotonic() < deadline:
        rc, out = run(command, env, timeout=30)
        if fq_name in out.split():
            return
        time.sleep(0.5)
    raise AssertionError(f'{fq_name} not in `{command}` within {timeout} s: {out!r}')


def wait_node_visible(env: dict, fq_name: str, timeout: float = 30) -> None:
    """Wait until the daemon lists the node (a fresh daemon needs 1-3 s of discovery)."""
    _wait_listed(env, 'ros2 node list', fq_name, timeout)


def wait_lifecycle_node(env: dict, fq_name: str, timeout: float = 30) -> None:
    """Wait until `ros2 lifecycle nodes` lists the node (until then `get`: "Node not found")."""
    _wait_listed(env, 'ros2 lifecycle nodes', fq_name, timeout)


def stop_daemon(env: dict) -> None:
    run('ros2 daemon stop', env, timeout=30)
