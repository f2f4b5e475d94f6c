"""Stop signals in bursts: a second (and third) SIGINT / SIGTERM during shut-down still exits 0.

A supervisor or an impatient user sends another signal while the node is stopping; before
ros/signals.py two SIGINTs 50 ms apart ended the process by the signal (exit code -2). Covered
while loading, idle and mid-generation (a doctored model: ~70 ms per token).
"""

import signal
import time

import pytest

pytest.importorskip('rclpy')
pytest.importorskip('qwen_vl_interfaces')

from node_harness import (  # noqa: E402
    NodeProcess, READY, doctored_model, image_msg, launch_arguments, picture, service_client)

pytestmark = pytest.mark.timeout(180)

INT, TERM = signal.SIGINT, signal.SIGTERM


def burst(node: NodeProcess, signals, gap_s: float = 0.05):
    """Send ``signals`` ``gap_s`` apart; return (exit code, seconds from the first signal)."""
    t0 = time.monotonic()
    for i, sig in enumerate(signals):
        if i:
            time.sleep(gap_s)
        if node.proc.poll() is None:
            node.proc.send_signal(sig)
    rc = node.wait_exit(10)
    return rc, time.monotonic() - t0


def check(node, rc, took):
    out = node.output()
    node.stop(signal.SIGKILL)
    assert rc == 0, f'exit code {rc}:\n{out[-3000:]}'
    assert took < 2.0, f'took {took:.2f} s'
    assert 'Traceback' not in out, out[-3000:]
    return out


@pytest.mark.parametrize('signals', [(INT, INT), (TERM, INT, TERM)])
def test_a_burst_of_signals_when_idle_exits_0(tiny_onnx_dir, tmp_path, signals):
    node = NodeProcess(launch_arguments(model_dir=str(tiny_onnx_dir), threads=1), tmp_path)
    node.wait_for_log(READY, 90)
    out = check(node, *burst(node, signals))
    # an idle node may be gone within 50 ms: the later signals then meet SIG_IGN at exit
    assert 'stopped (' in out


def test_a_burst_of_signals_while_loading_exits_0(tiny_onnx_dir, tmp_path):
    node = NodeProcess(launch_arguments(model_dir=str(tiny_onnx_dir), threads=1), tmp_path)
    node.wait_for_log(r'\]: loading ', 90)
    check(node, *burst(node, (TERM, INT)))


def test_a_burst_of_signals_mid_generation_exits_0(tiny_onnx_dir, tmp_path_factory, tmp_path):
    slow = doctored_model(tiny_onnx_dir, tmp_path_factory.mktemp('slow'), slow_size=1024)
    node = NodeProcess(launch_arguments(model_dir=str(slow), threads=1), tmp_path)
    node.wait_for_log(READY, 90)
    with service_client() as client:
        done, _ = client.call_async(client.describe_client, client.describe_request(
            image=image_msg(picture(seed=9)), max_new_tokens=1000))
        time.sleep(1.5)     # the prefill is done, tokens are being generated
        assert not done.is_set(), 'the generation ended too early'
        check(node, *burst(node, (INT, TERM, INT)))
