"""Every way describe_node ends goes through one deterministic exit path (issue 9, item 11).

The node stops its threads in order (worker, executor, model sessions, rcl entities, context)
and then leaves with os._exit: no interpreter teardown, where native threads (onnxruntime,
DDS, executor) could meet half-destroyed objects (the rare SIGSEGV after "stopped"). Its last
output line names the exit code and any thread it did not wait for; here none is left behind.
`make demo` fails when the node's exit code is not 0 (scripts/demo.py exit_problem).
"""
import importlib.util
import signal
import subprocess
import sys

import pytest

pytest.importorskip('rclpy')
pytest.importorskip('qwen_vl_interfaces')

from node_harness import REPO, launch_arguments, ready_node, run_node_once  # noqa: E402

pytestmark = pytest.mark.timeout(180)


def last_line(text: str) -> str:
    return text.rstrip().splitlines()[-1]


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_leaves_through_the_exit_path(tiny_onnx_dir, tmp_path, sig):
    args = launch_arguments(model_dir=str(tiny_onnx_dir), backend='onnxruntime', threads=1)
    with ready_node(args, tmp_path, stop_signal=sig) as node:
        pass
    assert node.proc.returncode == 0, node.output()[-3000:]
    out = node.output()
    assert last_line(out) == '[describe_node] exit code 0', out[-2000:]
    assert out.index('stopped (') < out.rindex('[describe_node] exit code 0')


def test_bad_parameters_and_load_failures_leave_through_it_too(tmp_path):
    rc, out = run_node_once(launch_arguments(model_dir=str(tmp_path), period_s=-1.0),
                            tmp_path / 'params', timeout=60)
    assert rc == 2 and last_line(out) == '[describe_node] exit code 2', out[-2000:]
    rc, out = run_node_once(launch_arguments(model_dir=str(tmp_path)), tmp_path / 'load',
                            timeout=60)
    assert rc == 1 and last_line(out) == '[describe_node] exit code 1', out[-2000:]


def demo_module():
    spec = importlib.util.spec_from_file_location('qvr_demo', REPO / 'scripts' / 'demo.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_demo_fails_on_a_nonzero_node_exit_code():
    demo = demo_module()
    assert demo.exit_problem(0) is None
    assert 'SIGSEGV' in demo.exit_problem(-11) and '-11' in demo.exit_problem(-11)
    assert 'SIGKILL' in demo.exit_problem(-9)
    assert 'code 1' in demo.exit_problem(1)


def test_a_crashing_child_exit_code_reads_as_the_demo_says():
    """The demo's rule on a real process that dies by SIGSEGV (what was seen once)."""
    proc = subprocess.run([sys.executable, '-c', 'import os, signal; '
                           'os.kill(os.getpid(), signal.SIGSEGV)'], timeout=30)
    assert proc.returncode == -11
    assert 'SIGSEGV' in demo_module().exit_problem(proc.returncode)
