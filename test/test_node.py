"""The node end to end: describe_node started once, as the launch file does, on the tiny model.

Covers the service (request image in every encoding, newest topic frame), the stamped output,
prompt and other parameters changed at run time, timer mode, a flood of requests, stale frames,
bad inputs, /diagnostics counters and a clean SIGTERM.
"""

import signal
import threading
import time

import pytest

pytest.importorskip('rclpy')
pytest.importorskip('qwen_vl_interfaces')

from node_harness import (  # noqa: E402
    DIAGNOSTICS_WAIT_S, ready_node, service_client, image_msg, launch_arguments, now_stamp,
    picture)

pytestmark = pytest.mark.timeout(120)

CAMERA = '/camera/image_raw'
MAX_PIXELS = 640 * 480
DEFAULT_PROMPT = 'Describe this image.'


@pytest.fixture(scope='module')
def node(tiny_onnx_dir, tmp_path_factory):
    """Start the node under test (raw images remapped from CAMERA, 1 onnxruntime thread)."""
    args = launch_arguments(model_dir=str(tiny_onnx_dir), backend='onnxruntime',
                            image_topic=CAMERA, threads=1, queue_size=2, max_image_age_s=2.0,
                            max_pixels=MAX_PIXELS, request_timeout_s=60.0)
    with ready_node(args, tmp_path_factory.mktemp('node'), signal.SIGTERM) as proc:
        yield proc


@pytest.fixture(scope='module')
def client(node):
    with service_client(image_topic=CAMERA) as c:
        yield c


def same_stamp(a, b) -> bool:
    return a.sec == b.sec and a.nanosec == b.nanosec


def describe_topic_frame(client, msg, expect=None, timeout=30.0, **kw):
    """Publish ``msg`` until a ~/describe without image answers about it.

    Or until it is refused with a message that starts with ``expect``.
    """
    deadline = time.monotonic() + timeout
    while True:
        client.image_pub.publish(msg)
        time.sleep(0.05)
        r = client.describe(**kw)
        if r.success and same_stamp(r.description.header.stamp, msg.header.stamp):
            return r
        if expect and not r.success and r.message.startswith(expect):
            return r
        assert time.monotonic() < deadline, f'frame never described: {r.message}'


def test_no_frame_yet(client):
    r = client.describe()
    assert not r.success
    assert r.message.startswith('no image'), r.message
    assert CAMERA in r.message


ENCODINGS = [
    ('rgb8', False, 0), ('bgr8', False, 0), ('rgba8', False, 4), ('bgra8', False, 0),
    ('mono8', False, 3), ('mono16', False, 0), ('mono16', True, 2),
    ('yuv422', False, 0), ('uyvy', False, 0), ('yuyv', False, 8), ('yuv422_yuy2', False, 0),
    ('bayer_rggb8', False, 0), ('bayer_bggr8', False, 2), ('bayer_gbrg8', False, 0),
    ('bayer_grbg8', False, 0), ('bayer_rggb16', False, 0), ('bayer_grbg16', True, 0),
]


@pytest.mark.parametrize('encoding,big_endian,pad', ENCODINGS,
                         ids=[f'{e}{"-be" if b else ""}{"-pad" if p else ""}'
                              for e, b, p in ENCODINGS])
def test_request_image_each_encoding(client, encoding, big_endian, pad):
    stamp = now_stamp()
    msg = image_msg(picture(), encoding, stamp=stamp, frame_id=f'cam_{encoding}',
                    big_endian=big_endian, pad=pad)
    r = client.describe(image=msg, max_new_tokens=6)
    assert r.success, r.message
    assert r.message == ''
    d = r.description
    assert d.header.frame_id == f'cam_{encoding}'
    assert same_stamp(d.header.stamp, stamp)
    assert d.prompt == DEFAULT_PROMPT
    assert d.trigger == 'service'
    assert 1 <= d.generated_tokens <= 6
    assert d.finish_reason in ('stop', 'length')
    assert d.prompt_tokens > 64          # 448x448 -> 64 image tokens plus the template
    assert d.vision_ms > 0 and d.time_to_first_token_ms >= d.vision_ms


def test_same_picture_same_text_in_every_lossless_encoding(client):
    """Channel order, alpha, padding and byte order must not change what the model sees."""
    rgb = picture(seed=5)
    colour = {e: client.describe(image=image_msg(rgb, e, pad=p), max_new_tokens=12)
              for e, p in (('rgb8', 0), ('bgr8', 2), ('rgba8', 0), ('bgra8', 4))}
    texts = {e: r.description.text for e, r in colour.items()}
    assert all(r.success for r in colour.values())
    assert len(set(texts.values())) == 1, texts
    mono = [client.describe(image=image_msg(rgb, e, big_endian=b), max_new_tokens=12)
            for e, b in (('mono8', False), ('mono16', False), ('mono16', True))]
    assert len({r.description.text for r in mono}) == 1


def test_topic_frame_is_described_with_its_stamp_on_both_topics(client):
    stamp = now_stamp()
    msg = image_msg(picture(seed=1), 'bgr8', stamp=stamp, frame_id='front_camera')
    r = describe_topic_frame(client, msg, max_new_tokens=8)
    assert r.success, r.message
    d = r.description
    assert d.header.frame_id == 'front_camera' and d.trigger == 'service'
    client.wait_until(lambda: any(same_stamp(m.header.stamp, stamp) for m in client.stamped),
                      20, 'the description on ~/description/stamped')
    client.wait_until(lambda: any(t.data == d.text for t in client.texts), 20,
                      'the text on ~/description')


def test_prompt_and_max_new_tokens_changed_at_run_time(client):
    rgb = picture(seed=3)
    before = client.describe(image=image_msg(rgb), max_new_tokens=16)
    assert before.success and before.description.prompt == DEFAULT_PROMPT
    new_prompt = 'What colour is the largest block?'
    try:
        assert all(r.successful for r in client.set_params(prompt=new_prompt))
        after = client.describe(image=image_msg(rgb), max_new_tokens=16)
        assert after.success, after.message
        assert after.description.prompt == new_prompt
        # the model answered the new prompt: other prompt length, other text; the same answer
        # as a request that names the prompt itself
        assert after.description.prompt_tokens != before.description.prompt_tokens
        assert after.description.text != before.description.text
        named = client.describe(prompt=new_prompt, image=image_msg(rgb), max_new_tokens=16)
        assert named.description.text == after.description.text
        # a request's own prompt still wins over the parameter
        own = client.describe(prompt=DEFAULT_PROMPT, image=image_msg(rgb), max_new_tokens=16)
        assert own.description.text == before.description.text
        # max_new_tokens applies when the request leaves it 0
        assert client.set_params(max_new_tokens=3)[0].successful
        short = client.describe(image=image_msg(rgb))
        assert short.success and short.description.generated_tokens <= 3
    finally:
        assert all(r.successful for r in client.set_params(prompt=DEFAULT_PROMPT,
                                                           max_new_tokens=128))


@pytest.mark.parametrize('name,value,why', [
    ('period_s', -1.0, ''),
    ('temperature', 500.0, ''),
    ('prompt', '   ', 'empty'),
    ('image_transport', 'compressed', 'read-only'),
    ('model_dir', '/elsewhere', 'read-only'),
    ('queue_size', 5, 'read-only'),
])
def test_bad_parameter_changes_are_refused(client, name, value, why):
    (result,) = client.set_params(**{name: value})
    assert not result.successful
    assert why in result.reason.lower().replace('read only', 'read-only')


def test_timer_describes_fresh_frames_on_both_topics(client):
    published = []
    stop = threading.Event()

    def camera():
        i = 0
        while not stop.is_set():
            msg = image_msg(picture(seed=10 + i % 3), 'rgb8', stamp=now_stamp(),
                            frame_id='timer_cam')
            published.append(msg.header.stamp)
            client.image_pub.publish(msg)
            i += 1
            time.sleep(0.1)

    n_before = len(client.stamped)
    thread = threading.Thread(target=camera, daemon=True)
    thread.start()
    try:
        assert client.set_params(period_s=0.4)[0].successful
        timer_msgs = client.wait_until(
            lambda: [m for m in client.stamped[n_before:] if m.trigger == 'timer'][:3]
            if len([m for m in client.stamped[n_before:] if m.trigger == 'timer']) >= 3
            else None, 60, 'three timer descriptions')   # 128 tokens each: seconds when loaded
    finally:
        stop.set()
        thread.join(2)
    for m in timer_msgs:
        assert m.header.frame_id == 'timer_cam'
        assert any(same_stamp(m.header.stamp, s) for s in published)
        assert m.prompt == DEFAULT_PROMPT
        client.wait_until(lambda m=m: any(t.data == m.text for t in client.texts), 20,
                          'the same text on ~/description')
    # distinct frames: a frame is described once
    stamps = [(m.header.stamp.sec, m.header.stamp.nanosec) for m in timer_msgs]
    assert len(set(stamps)) == len(stamps)
    # no new frames: ticks are skipped and counted, not queued
    skipped = int(client.counters().get('timer_skipped_no_frame', 0))
    client.wait_counter('timer_skipped_no_frame', skipped + 2)
    # period 0 switches the timer off
    assert client.set_params(period_s=0.0)[0].successful
    time.sleep(0.5)
    n = len(client.stamped)
    client.image_pub.publish(image_msg(picture(), stamp=now_stamp(), frame_id='timer_cam'))
    time.sleep(1.2)
    assert not [m for m in client.stamped[n:] if m.trigger == 'timer']


def test_flood_gets_answers_or_immediate_busy_and_node_still_serves(client):
    msg = image_msg(picture(seed=7))
    t0 = time.monotonic()
    calls = []
    for _ in range(16):
        done, future = client.call_async(client.describe_client,
                                         client.describe_request(image=msg, max_new_tokens=200))
        calls.append((done, future))
    answers = []
    for done, future in calls:
        assert done.wait(60), 'a flooded request got no answer'
        answers.append(future.result())
    took = time.monotonic() - t0
    ok = [a for a in answers if a.success]
    busy = [a for a in answers if not a.success]
    assert all(a.message.startswith('busy') for a in busy), [a.message for a in busy]
    assert 'queue_size 2' in (busy[0].message if busy else 'queue_size 2')
    assert len(ok) >= 1
    assert busy, f'16 requests in {took:.2f} s and none was refused as busy'
    client.wait_counter('busy_replies', len(busy))
    after = client.describe(image=msg, max_new_tokens=4)
    assert after.success, after.message


def test_stale_topic_frames_are_refused_request_images_are_not(client):
    old = now_stamp(-10.0)
    # a request's own image was chosen by its caller (a stored snapshot): described, its stamp
    # copied to the description, whatever its age (max_image_age_s is 2 here)
    r = client.describe(image=image_msg(picture(), stamp=old, frame_id='snapshot'),
                        max_new_tokens=4)
    assert r.success, r.message
    assert (r.description.header.stamp.sec, r.description.header.stamp.nanosec) == \
        (old.sec, old.nanosec) and r.description.header.frame_id == 'snapshot'
    r = describe_topic_frame(client, image_msg(picture(), stamp=old, frame_id='old'),
                             expect='stale image')
    assert not r.success and r.message.startswith('stale image'), r.message
    # a fresh frame after it is fine
    r = describe_topic_frame(client, image_msg(picture(), stamp=now_stamp()), max_new_tokens=4)
    assert r.success, r.message


def typed_call(client, image, max_new_tokens, **fields):
    req = client.describe_request('Name what you see.', image, max_new_tokens)
    for k, v in fields.items():
        setattr(req, k, v)
    done, future = client.call_async(client.describe_client, req)
    assert done.wait(60), 'no ~/describe answer'
    return future.result()


def test_typed_answer_cut_by_the_budget_is_not_a_success(client):
    """Answer success false naming the budget, the partial description kept, nothing published."""
    img = image_msg(picture(seed=41))
    grows = '{"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}'
    r = typed_call(client, img, 4, json_schema=grows)
    assert not r.success
    assert 'max_new_tokens = 4' in r.message and '(4 tokens used)' in r.message, r.message
    assert '$: object without additionalProperties: false' in r.message, r.message
    assert '$.name: string without maxLength' in r.message, r.message
    d = r.description
    assert d.finish_reason == 'length' and d.generated_tokens == 4 and d.text.startswith('{')
    assert [x.text for x in r.descriptions] == [d.text]
    r = typed_call(client, img, 1, choices=['the cup on the left', 'the cup on the right'])
    assert not r.success and 'longest choice' in r.message, r.message
    assert r.description.choice_index == -1 and r.description.finish_reason == 'length'
    # with room, the same kinds of question are answers
    r = typed_call(client, img, 40, choices=['the cup on the left', 'the cup on the right'])
    assert r.success and r.description.choice_index in (0, 1), r.message
    ok = client.describe('After.', image=img, max_new_tokens=2)
    assert ok.success, ok.message
    client.wait_until(lambda: any(m.prompt == 'After.' for m in client.stamped), 30,
                      'the description after them')
    cut = [m for m in client.stamped if m.prompt == 'Name what you see.' and
           m.finish_reason == 'length']
    assert not cut, [m.text for m in cut]
    client.wait_counter('answers_cut', 2)


def _short_data(msg):
    msg.data = bytes(msg.data)[:-10]
    return msg


def _set(msg, **fields):
    for k, v in fields.items():
        setattr(msg, k, v)
    return msg


def _bad_step(msg):
    msg.step = msg.width * 3 - 1
    return msg


BAD_IMAGES = {
    'data shorter than step x height': (lambda: _short_data(image_msg(picture())), 'bytes'),
    'step below width x pixel size': (lambda: _bad_step(image_msg(picture())), 'step'),
    'unsupported encoding': (lambda: _set(image_msg(picture()), encoding='32FC1'),
                             'unsupported image encoding'),
    'over max_pixels': (lambda: image_msg(picture(700, 800)), 'max_pixels'),
    'odd width yuyv': (lambda: _set(image_msg(picture(10, 16), 'yuyv'), width=15),
                       'even width'),
    'zero size': (lambda: _set(image_msg(picture()), height=0, width=0), 'empty image'),
}


@pytest.mark.parametrize('case', list(BAD_IMAGES))
def test_bad_request_image_gets_its_reason(client, case):
    build, words = BAD_IMAGES[case]
    r = client.describe(image=build())
    assert not r.success
    assert r.message.startswith('bad image: '), r.message
    assert words in r.message


def test_too_long_prompt_gets_its_reason(client):
    r = client.describe(prompt='describe ' * 400, image=image_msg(picture()))
    assert not r.success
    assert r.message.startswith('prompt too long: '), r.message


def test_bad_topic_frame_is_counted_warned_and_node_keeps_serving(client, node):
    errors = int(client.counters().get('image_errors', 0))
    mark = len(node.output())
    bad = _short_data(image_msg(picture(), stamp=now_stamp(), frame_id='broken'))
    r = describe_topic_frame(client, bad, expect='bad image')
    assert not r.success and r.message.startswith('bad image'), r.message
    client.wait_counter('image_errors', errors + 1)
    node.wait_for_log(r'not described: bad image', 30, start=mark)
    good = describe_topic_frame(client, image_msg(picture(), stamp=now_stamp()),
                                max_new_tokens=4)
    assert good.success, good.message


def test_diagnostics_count_what_happened(client):
    c = client.wait_until(lambda: client.counters() or None, DIAGNOSTICS_WAIT_S, '/diagnostics')
    assert c['state'] == 'ready'
    assert int(c['descriptions']) >= 20
    assert int(c['frames_received']) >= 1
    assert int(c['stale_refused']) >= 1


def test_sigterm_stops_the_node_cleanly(client, node):
    rc, took = node.stop(signal.SIGTERM, 5)
    assert rc == 0, node.output()[-2000:]
    assert took < 2.0
    assert 'stopped (' in node.output()
