"""describe_managed_node not active: every entry point gives one clear reason for its state.

The node is describe_managed_node's ManagedDescribeNode in this process (the class its main()
builds, on a MultiThreadedExecutor thread), driven through real lifecycle transitions: the
lifecycle_msgs ChangeState calls `ros2 lifecycle set` makes, from a client node in its own
context. Inactive (after configure, and after deactivate), deactivating (a streamed goal and a
queued request cut short) and unconfigured: ~/describe, ~/detect, ~/describe_stream goals, the
timer and /diagnostics all say "not active (state ...)" and what to do, never "shutting down";
after the node's own shut-down (node.close(), what SIGINT runs) they say "shutting down".
The model is the doctored slow tiny one, so a goal is still generating when it is cut short.
"""

import time

import pytest

pytest.importorskip('rclpy')
pytest.importorskip('qwen_vl_interfaces')

from node_harness import (  # noqa: E402
    RosClient, doctored_model, image_msg, in_process_node, launch_arguments, now_stamp, picture)
from test_managed_node_rclpy import Lifecycle  # noqa: E402
from test_stream_action import Goal, handshake, status_name  # noqa: E402

pytestmark = pytest.mark.timeout(240)

CLI = '`ros2 lifecycle set /qwen_vl {}`'
# What each state answers (written out here, not taken from the code under test).
INACTIVE = 'not active (state inactive): activate it with ' + CLI.format('activate')
DEACTIVATING = ('not active (state deactivating): it is being deactivated; activate it again '
                'with ' + CLI.format('activate'))
UNCONFIGURED = ('not active (state unconfigured): no model loaded; configure and activate it '
                'with ' + CLI.format('configure') + ', then ' + CLI.format('activate'))
PROMPT = 'Describe this image.'


@pytest.fixture(scope='module')
def node(tiny_onnx_dir, tmp_path_factory):
    from qwen_vl_ros.ros.managed import ManagedDescribeNode
    slow = doctored_model(tiny_onnx_dir, tmp_path_factory.mktemp('doctored'), slow_size=1024)
    args = launch_arguments(model_dir=str(slow), backend='onnxruntime', threads=1, queue_size=2,
                            max_image_age_s=0.0, max_new_tokens=4, period_s=0.5)
    with in_process_node(ManagedDescribeNode, 'describe_managed_node', args,
                         tmp_path_factory.mktemp('ros_log'), wait_ready=False) as node:
        yield node


@pytest.fixture(scope='module')
def client(node):
    from qwen_vl_interfaces.action import Describe
    from rclpy.action import ActionClient

    from qwen_vl_ros.ros import detect as detect_io
    c = RosClient()       # (service_client() would wait for ~/describe: made on configure)
    try:
        c.life = Lifecycle(c)
        c.stream = ActionClient(c.node, Describe, '/qwen_vl/describe_stream')
        c.detect = (c.node.create_client(detect_io.Detect, '/qwen_vl/detect')
                    if detect_io.AVAILABLE else None)
        yield c
    finally:
        c.close()


def detect(c, timeout=30.0):
    from qwen_vl_ros.ros import detect as detect_io
    req = detect_io.Detect.Request(labels=['cup'], image=image_msg(picture(seed=3)),
                                   max_new_tokens=4)
    done, future = c.call_async(c.detect, req)
    assert done.wait(timeout), 'no ~/detect answer'
    return future.result()


def answers(c) -> dict:
    """Return what ~/describe, ~/detect and a ~/describe_stream goal answer now."""
    assert c.describe_client.wait_for_service(20) and c.stream.wait_for_server(timeout_sec=20)
    handshake(c)
    img = image_msg(picture(seed=5))
    out = {}
    r = c.describe(PROMPT, image=img, max_new_tokens=4)
    assert not r.success
    out['describe'] = r.message
    if c.detect is not None:
        assert c.detect.wait_for_service(20)
        r = detect(c)
        assert not r.success and not r.detections.detections
        out['detect'] = r.message
    g = Goal(c, PROMPT, img, max_new_tokens=4).wait(30)
    assert status_name(g.status) == 'aborted' and not g.result.success and not g.feedback
    out['goal'] = g.result.message
    return out


def wait_status(c, concern: str, message: str, timeout: float = 10.0):
    """Return the first /diagnostics status of ``concern`` whose message is ``message``."""
    def found():
        st = c.status(concern)
        return st if st is not None and st.message == message else None
    try:
        return c.wait_until(found, timeout, f'{concern} status {message!r}')
    except AssertionError as e:
        st = c.status(concern)
        raise AssertionError(f'{e}; last: {st.message if st else None!r}') from None


def values(st) -> dict:
    return {kv.key: kv.value for kv in st.values}


def test_configured_but_inactive_every_entry_point_says_so(client):
    from diagnostic_msgs.msg import DiagnosticStatus
    assert client.life.get() == 'unconfigured'
    assert not client.describe_client.service_is_ready()     # nothing before configure
    assert client.life.set('configure') and client.life.get() == 'inactive'
    got = answers(client)
    assert set(got.values()) == {INACTIVE}, got
    st = wait_status(client, 'model', INACTIVE)
    assert st.level == DiagnosticStatus.WARN
    assert values(st)['lifecycle_state'] == 'inactive'
    assert wait_status(client, 'timer', f'no ticks: {INACTIVE}').level == DiagnosticStatus.OK
    assert wait_status(client, 'inference', f'not serving: {INACTIVE}')
    # not 'no frame received yet' (a new user saw it after frames had come): no subscription
    assert wait_status(client, 'camera', f'not subscribed to /image: {INACTIVE}')


def test_deactivate_cuts_a_goal_and_a_request_short_with_the_reason(client, node):
    assert client.life.set('activate') and client.life.get() == 'active'
    deadline = time.monotonic() + 60
    while True:    # the subscription is new: describe the topic frame once it is in
        client.image_pub.publish(image_msg(picture(seed=1), stamp=now_stamp()))
        r = client.describe(PROMPT, max_new_tokens=2, timeout=60)
        if r.success:
            break
        assert r.message.startswith(('no image', 'loading')) and \
            time.monotonic() < deadline, r.message
        time.sleep(0.2)
    ticks = int(client.wait_counter('timer_ticks', 1, timeout=10))
    assert ticks >= 1
    goal = Goal(client, PROMPT, image_msg(picture(seed=2)), max_new_tokens=1000)
    goal.wait_feedback(2)
    queued = client.call_async(client.describe_client,
                               client.describe_request(PROMPT, image_msg(picture(seed=4)), 1000))
    deadline = time.monotonic() + 10
    while node.worker.pending < 2:
        assert time.monotonic() < deadline, 'the request did not queue behind the goal'
        time.sleep(0.02)
    assert client.life.set('deactivate') and client.life.get() == 'inactive'
    goal.wait(30)
    assert status_name(goal.status) == 'aborted' and not goal.result.success
    assert goal.result.message in (DEACTIVATING, INACTIVE), goal.result.message
    d = goal.result.description      # the partial answer is kept
    assert d.finish_reason == 'cancelled' and 2 <= d.generated_tokens < 1000
    assert d.text.startswith(goal.feedback[-1].text)
    done, future = queued
    assert done.wait(30)
    r = future.result()
    assert not r.success and r.message in (DEACTIVATING, INACTIVE), r.message
    # and from now on: inactive, the timer stopped
    got = answers(client)
    assert set(got.values()) == {INACTIVE}, got
    wait_status(client, 'model', INACTIVE)
    stopped = int(client.counters()['timer_ticks'])
    time.sleep(1.5)                  # three periods
    assert int(client.counters()['timer_ticks']) == stopped, 'the timer still ticks'
    assert wait_status(client, 'timer', f'no ticks: {INACTIVE}')
    assert int(client.counters()['frames_received']) >= 1
    assert wait_status(client, 'camera', f'not subscribed to /image: {INACTIVE}')


def test_cleaned_up_says_unconfigured_and_serves_nothing(client):
    """Goals sent as cleanup begins are answered (aborted with the reason) before the server goes.

    Each asks for its result at once, as a stock client does: none may wait forever.
    """
    from diagnostic_msgs.msg import DiagnosticStatus
    assert client.stream.wait_for_server(timeout_sec=20)
    handshake(client)
    goals = [Goal(client, PROMPT, image_msg(picture(seed=40 + i)), max_new_tokens=4)
             for i in range(12)]
    assert client.life.set('cleanup') and client.life.get() == 'unconfigured'
    # a goal request the server did not take before it went is never answered (rclpy); every
    # goal it accepted is
    goals = [g for g in goals if g.accepted.wait(5) and g.handle.accepted]
    print(f'{len(goals)} of 12 goals accepted before cleanup')
    for g in goals:
        g.wait(20)
        assert status_name(g.status) == 'aborted' and not g.result.success
        assert g.result.message.startswith('not active (state '), g.result.message
    st = wait_status(client, 'model', UNCONFIGURED)
    assert st.level == DiagnosticStatus.WARN
    assert values(st)['state'] == 'unconfigured'
    deadline = time.monotonic() + 10
    while client.describe_client.service_is_ready():
        assert time.monotonic() < deadline, '~/describe still served after cleanup'
        time.sleep(0.2)


def test_after_the_node_is_shut_down_every_entry_point_says_shutting_down(client, node):
    """node.close() is what SIGINT / SIGTERM run first (node.shut_down): shutting down."""
    assert client.life.set('configure') and client.life.set('activate')
    assert client.life.get() == 'active'
    node.close()
    got = answers(client)
    assert set(got.values()) == {'shutting down'}, got
