"""/diagnostics as an operator reads it: one status per concern, levels and plain messages.

describe_node runs with the timer at 0.5 s and max_image_age_s 1.5; a real subscriber in the
test process reads the statuses through: no camera yet, a camera streaming, a camera gone quiet,
and a bad request image. (A hung runtime going ERROR is in test_faults.py.)
"""

import threading
import time

import pytest

pytest.importorskip('rclpy')
pytest.importorskip('qwen_vl_interfaces')

from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from node_harness import (  # noqa: E402
    DIAGNOSTICS_WAIT_S, image_msg, launch_arguments, now_stamp, picture, ready_node,
    service_client)

pytestmark = pytest.mark.timeout(180)

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR
CONCERNS = ('model', 'camera', 'inference', 'timer')
MAX_AGE_S = 1.5


@pytest.fixture(scope='module')
def client(tiny_onnx_dir, tmp_path_factory):
    args = launch_arguments(model_dir=str(tiny_onnx_dir), threads=1, period_s=0.5,
                            max_new_tokens=4, max_image_age_s=MAX_AGE_S,
                            image_reliability='reliable')
    with ready_node(args, tmp_path_factory.mktemp('diag_node')):
        with service_client() as c:
            yield c


def newest(client, after: float = 0.0) -> dict:
    """{concern: DiagnosticStatus} of the first array received after monotonic ``after``."""
    def one():
        with client._cond:
            for t, arr in reversed(client.arrivals):
                own = client.own_statuses(arr)     # not a leftover node's
                if t > after and own:
                    return {st.name.rsplit(': ', 1)[1]: st for st in own}
        return None
    return client.wait_until(one, DIAGNOSTICS_WAIT_S, '/diagnostics after the mark')


@pytest.fixture(scope='module', autouse=True)
def arrival_times(client):
    """Stamp each /diagnostics array with its arrival (monotonic) in client.arrivals."""
    from diagnostic_msgs.msg import DiagnosticArray
    client.arrivals = []

    def keep(msg):
        with client._cond:
            client.arrivals.append((time.monotonic(), msg))
            client._cond.notify_all()
    client.node.create_subscription(DiagnosticArray, '/diagnostics', keep, 10)


def wait_for(client, concern: str, level, words: str, timeout: float = DIAGNOSTICS_WAIT_S):
    """Wait for a status of ``concern`` at ``level`` whose message contains ``words``."""
    deadline = time.monotonic() + timeout
    while True:
        st = newest(client, time.monotonic() - 0.01)[concern]
        if st.level == level and words in st.message:
            return st
        assert time.monotonic() < deadline, (concern, st.level, st.message)


def test_one_status_per_concern_named_after_the_node(client):
    statuses = newest(client)
    assert set(statuses) == set(CONCERNS)
    for concern, st in statuses.items():
        assert st.name == f'/qwen_vl: {concern}'
        assert st.message
    model = statuses['model']
    assert model.level == OK
    assert model.message.startswith('ready: onnxruntime on CPUExecutionProvider, model ')
    values = {kv.key: kv.value for kv in model.values}
    assert values['state'] == 'ready' and values['backend'] == 'onnxruntime'
    assert values['runs_on'] == 'CPUExecutionProvider'
    # every counter in exactly one status
    keys = [kv.key for st in statuses.values() for kv in st.values]
    assert len(keys) == len(set(keys)), keys


def test_no_camera_yet_warns_and_the_timer_says_why_it_skips(client):
    st = wait_for(client, 'camera', WARN, 'no frame received on /image yet')
    assert {kv.key: kv.value for kv in st.values}['frames_received'] == '0'
    wait_for(client, 'timer', WARN, 'no tick described in the last')
    st = wait_for(client, 'timer', WARN, 'no new frame')
    assert int({kv.key: kv.value for kv in st.values}['timer_skipped_no_frame']) >= 1


def stream(client, seconds: float, hz: float = 10.0):
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        client.image_pub.publish(image_msg(picture(seed=i % 3), stamp=now_stamp()))
        i += 1
        time.sleep(1.0 / hz)


def test_a_streaming_camera_is_ok_with_rate_age_and_timings(client):
    stream(client, 3.0)
    # the report read while frames still come (once they stop, ticks have no new frame)
    streaming = threading.Thread(target=stream, args=(client, 2.5), daemon=True)
    streaming.start()
    statuses = newest(client, time.monotonic())
    streaming.join()
    cam = statuses['camera']
    assert cam.level == OK, cam.message
    assert cam.message.startswith('receiving /image: ') and 'frames/s, newest' in cam.message
    inf = statuses['inference']
    assert inf.level == OK, inf.message
    values = {kv.key: kv.value for kv in inf.values}
    for key in ('vision_ms', 'time_to_first_token_ms', 'decode_ms', 'tokens_per_second'):
        assert float(values[f'last_{key}']) >= 0 and f'p95_{key}' in values
    assert float(values['p95_time_to_first_token_ms']) > 0
    assert 'first token' in inf.message and 'tokens/s' in inf.message
    assert int(values['descriptions']) >= 1
    assert statuses['timer'].level == OK and statuses['timer'].message.startswith('every 0.5 s')


def test_a_camera_gone_quiet_warns_with_the_age(client):
    stream(client, 1.0)
    st = wait_for(client, 'camera', WARN, f'(max_image_age_s {MAX_AGE_S:g})',
                  timeout=MAX_AGE_S + DIAGNOSTICS_WAIT_S)
    assert 'the newest frame on /image is ' in st.message
    # The value is printed to 10 ms: an age just past the limit (1.501 s) reads 1.50.
    age = float({kv.key: kv.value for kv in st.values}['newest_frame_age_s'])
    assert age >= MAX_AGE_S


def test_a_bad_request_image_warns_in_inference(client):
    bad = image_msg(picture(), stamp=now_stamp())
    bad.data = bytes(bad.data)[:100]        # wrong data size for width x height x 3
    mark = time.monotonic()
    r = client.describe(image=bad, timeout=30)
    assert not r.success and r.message.startswith('bad image')

    def warned():
        with client._cond:
            return [arr for t, arr in client.arrivals if t > mark
                    for st in client.own_statuses(arr)
                    if st.name.endswith(': inference') and st.level == WARN
                    and 'new error(s); last: bad image' in st.message]
    client.wait_until(warned, DIAGNOSTICS_WAIT_S, 'inference WARN naming the bad image')
