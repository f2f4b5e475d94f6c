"""The node on compressed images, in a namespace, with a model that is slow and can fail.

describe_node is started once, as the launch file starts it with namespace:=robot1 and
image_topic:=/cam/image, on a doctored copy of the tiny model (node_harness.doctored_model):
every generated token costs tens of milliseconds, and a white image makes the vision model fail
inside onnxruntime. Covers: JPEG / PNG frames, corrupt and truncated JPEG, a runtime error during
generation, and SIGINT during a long generation (exit code 0 within 2 s).
"""

import signal
import time

import numpy as np
import pytest

pytest.importorskip('rclpy')
pytest.importorskip('qwen_vl_interfaces')

from node_harness import (  # noqa: E402
    ready_node, service_client, compressed_msg, doctored_model, image_msg, launch_arguments,
    now_stamp, picture)

pytestmark = pytest.mark.timeout(120)

NAMESPACE = 'robot1'
CAMERA = '/cam/image'


@pytest.fixture(scope='module')
def slow_model(tiny_onnx_dir, tmp_path_factory):
    return doctored_model(tiny_onnx_dir, tmp_path_factory.mktemp('doctored'), slow_size=1024,
                          fault_on_white=True)


@pytest.fixture(scope='module')
def node(slow_model, tmp_path_factory):
    args = launch_arguments(namespace=NAMESPACE, model_dir=str(slow_model), image_topic=CAMERA,
                            threads=1, image_transport='compressed',
                            image_reliability='reliable', max_image_age_s=0.0)
    with ready_node(args, tmp_path_factory.mktemp('node'), signal.SIGKILL) as proc:
        yield proc


@pytest.fixture(scope='module')
def client(node):
    with service_client(node_ns=f'/{NAMESPACE}/qwen_vl', image_topic=CAMERA, compressed=True) as c:
        yield c


def publish_until(client, msg, expect_ok: bool, timeout: float = 15.0):
    """Publish ``msg`` and ask about the newest frame until the answer is about ``msg``."""
    deadline = time.monotonic() + timeout
    while True:
        client.image_pub.publish(msg)
        time.sleep(0.1)
        r = client.describe(max_new_tokens=1, timeout=30)
        if expect_ok and r.success and r.description.header.frame_id == msg.header.frame_id:
            return r
        if not expect_ok and not r.success and r.message.startswith('bad image'):
            return r
        assert time.monotonic() < deadline, f'no answer about {msg.header.frame_id}: {r.message}'


def test_ready_line_names_the_remapped_compressed_topic(node):
    assert f'image topic {CAMERA}/compressed (compressed, reliable)' in node.output()
    assert f'service /{NAMESPACE}/qwen_vl/describe' in node.output()


@pytest.mark.parametrize('fmt', ['jpeg', 'png'])
def test_compressed_frames_are_described(client, fmt):
    stamp = now_stamp()
    msg = compressed_msg(picture(seed=2), fmt, stamp=stamp, frame_id=f'cam_{fmt}')
    r = publish_until(client, msg, expect_ok=True)
    d = r.description
    assert (d.header.stamp.sec, d.header.stamp.nanosec) == (stamp.sec, stamp.nanosec)
    assert d.generated_tokens == 1 and d.trigger == 'service'


def _truncated_jpeg():
    data = compressed_msg(picture(seed=4)).data
    return bytes(data)[:len(data) // 2]


@pytest.mark.parametrize('name,data,words', [
    ('truncated', _truncated_jpeg, 'truncated'),
    ('garbage', lambda: b'\xff\xd8' + bytes(range(256)) * 4, 'JPEG'),
    ('not an image', lambda: b'hello, world' * 10, 'cannot decode'),
])
def test_corrupt_compressed_frames_are_refused(client, name, data, words):
    errors = int(client.counters().get('image_errors', 0))
    msg = compressed_msg(data=data(), stamp=now_stamp(), frame_id=name)
    r = publish_until(client, msg, expect_ok=False)
    assert words in r.message, r.message
    client.wait_counter('image_errors', errors + 1)


def test_runtime_error_gets_its_reason_and_the_node_keeps_serving(client):
    white = np.full((64, 64, 3), 255, np.uint8)
    r = client.describe(image=image_msg(white), max_new_tokens=2, timeout=30)
    assert not r.success
    assert r.message.startswith('runtime error: onnxruntime failed'), r.message
    client.wait_counter('runtime_errors', 1)
    r = client.describe(image=image_msg(picture()), max_new_tokens=2, timeout=30)
    assert r.success, r.message


def test_sigint_during_generation_exits_0_within_2_s(client, node):
    n = len(client.stamped)
    done, _ = client.call_async(client.describe_client,
                                client.describe_request(image=image_msg(picture(seed=9)),
                                                        max_new_tokens=1000))
    time.sleep(1.5)    # prefill is done; ~70 ms per token from here on
    assert not done.is_set() and len(client.stamped) == n, 'generation ended too early'
    rc, took = node.stop(signal.SIGINT, 5)
    assert rc == 0, node.output()[-3000:]
    assert took < 2.0, f'took {took:.2f} s'
    assert len(client.stamped) == n   # the cancelled generation published nothing
