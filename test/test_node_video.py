"""Video mode of the node: describe_node started once with video_frames 4 on the tiny model.

While the ring buffer fills, timer ticks are skipped and counted and requests are answered "no
video yet"; then the timer and ~/describe without an image describe the last 4 frames as one
video: the prompt length and text the core gives for those frames (at their real spacing),
stamped with the newest frame. A request image is still an image; a corrupt frame fails its
request with the reason and leaves the buffer; the newest frame's age counts. FrameStore's rules
(spacing, restarts, second_per_grid_t) are checked without a graph at the end.
"""

import signal
import time
from types import SimpleNamespace

import pytest

pytest.importorskip('rclpy')
pytest.importorskip('qwen_vl_interfaces')

from node_harness import (  # noqa: E402
    ready_node, service_client, image_msg, launch_arguments, picture)

pytestmark = pytest.mark.timeout(120)

CAMERA = '/video_cam/image_raw'
N = 4
INTERVAL = 0.5
MAX_NEW = 16
PROMPT = 'Describe this video.'
S = 1_000_000_000


@pytest.fixture(scope='module')
def model_dir(export_variant):
    """Return the tiny model built for 112x168 frames (test_pipeline's video model).

    The default 448x448 build has 256 tokens per pair of frames: a 4-frame video would not fit
    its 320-token prefill (the node answers "prompt too long"). Here a pair is 24 tokens.
    """
    return export_variant(image_size=(112, 168))


@pytest.fixture(scope='module')
def node(model_dir, tmp_path_factory):
    """Start the node in video mode (4 frames >= 0.5 s apart), greedy, timer off."""
    args = launch_arguments(model_dir=str(model_dir), backend='onnxruntime',
                            image_topic=CAMERA, threads=1, video_frames=N,
                            video_interval_s=INTERVAL, temperature=0.0, max_new_tokens=MAX_NEW,
                            prompt=PROMPT, max_image_age_s=5.0, request_timeout_s=60.0)
    with ready_node(args, tmp_path_factory.mktemp('node_video'), signal.SIGTERM) as proc:
        yield proc


@pytest.fixture(scope='module')
def client(node):
    with service_client(image_topic=CAMERA) as c:
        yield c


@pytest.fixture(scope='module')
def core(model_dir):
    """Load the same model in this process: what the node must agree with."""
    from qwen_vl_ros.vlm import Pipeline
    return Pipeline.load(str(model_dir), backend='onnxruntime', threads=1)


def expect(core, rgbs, second_per_grid_t=1.0):
    from qwen_vl_ros.vlm import GenerationOptions
    return core.describe(rgbs, PROMPT, GenerationOptions(
        max_new_tokens=MAX_NEW, greedy=True, second_per_grid_t=second_per_grid_t))


def ros_text(text: str) -> str:
    """Return ``text`` as the node publishes it (U+0000 replaced, see convert.ros_string)."""
    return text.replace('\x00', '\ufffd')


def stamp_ns(ns: int):
    from builtin_interfaces.msg import Time
    return Time(sec=ns // S, nanosec=ns % S)


def frames(n, spacing=INTERVAL, start_ns=None, sizes=((120, 160),), seed=0):
    """``n`` frames stamped exactly ``spacing`` apart from ``start_ns``: (msgs, rgbs).

    By default from a minute ahead: a frame from the future has age 0, so feeding the frames
    one by one never outlasts max_image_age_s (5 s), however loaded the machine.
    """
    t0 = time.time_ns() + 60 * S if start_ns is None else start_ns
    rgbs = [picture(*sizes[i % len(sizes)], seed=seed + i) for i in range(n)]
    msgs = [image_msg(rgb, 'rgb8', stamp=stamp_ns(t0 + int(round(i * spacing * S))),
                      frame_id='video_cam') for i, rgb in enumerate(rgbs)]
    return msgs, rgbs


def describe_until(client, done, repeat=None, timeout=30.0):
    """Call ~/describe (no image) until ``done(answer)``; return the last answer.

    ``repeat``: a frame to publish again before each call. The node's image queue is depth 1
    (sensor-data QoS): under load a frame can be overwritten by the next one before the
    executor takes it. A repeat has the same stamp, so it is never kept twice.
    """
    deadline = time.monotonic() + timeout
    while True:
        if repeat is not None:
            client.image_pub.publish(repeat)
            time.sleep(0.05)
        r = client.describe()
        if done(r) or time.monotonic() > deadline:
            return r
        time.sleep(0.05)


def filling(k):
    """Return a predicate: refused while the buffer holds ``k`` frames."""
    return lambda r: not r.success and r.message.startswith(f'no video yet: {k} of')


def feed(client, msgs, kept=0):
    """Publish frames in order, each until the node says it has kept it; return the count."""
    for msg in msgs:
        kept += 1
        r = describe_until(client, filling(kept), repeat=msg)
        assert filling(kept)(r), r.message
    return kept


def about(msg):
    """Return a predicate: described with ``msg``'s stamp, or refused but not for filling."""
    def done(r):
        if r.success:
            return same_stamp(r.description.header.stamp, msg.header.stamp)
        return not r.message.startswith('no video yet')
    return done


def restart_video(client, frames_=N):
    """Empty the ring buffer through the run-time parameter (0 = image mode frees it)."""
    assert client.set_params(video_frames=0)[0].successful
    assert client.set_params(video_frames=frames_)[0].successful


def same_stamp(a, b) -> bool:
    return a.sec == b.sec and a.nanosec == b.nanosec


def counter(client, name) -> int:
    return int(client.counters().get(name, 0))


def test_filling_ticks_are_skipped_then_the_timer_describes_the_video(client, core):
    restart_video(client)
    msgs, rgbs = frames(N)
    feed(client, msgs[:2])
    r = client.describe()
    assert r.message.startswith('no video yet: 2 of video_frames = 4 frames kept'), r.message
    assert CAMERA in r.message

    n0 = len(client.stamped)
    filling = counter(client, 'timer_skipped_video_filling')
    try:
        assert client.set_params(period_s=0.25)[0].successful
        client.wait_counter('timer_skipped_video_filling', filling + 2)
        assert not client.stamped[n0:], 'a tick described an unfilled buffer'
        feed(client, msgs[2:3], kept=2)
        deadline = time.monotonic() + 60
        while not [m for m in client.stamped[n0:] if m.trigger == 'timer']:
            assert time.monotonic() < deadline, 'no timer description of the video'
            client.image_pub.publish(msgs[3])
            time.sleep(0.1)
        d = next(m for m in client.stamped[n0:] if m.trigger == 'timer')
    finally:
        assert client.set_params(period_s=0.0)[0].successful
    assert same_stamp(d.header.stamp, msgs[-1].header.stamp)
    assert d.header.frame_id == 'video_cam' and d.prompt == PROMPT
    want = expect(core, rgbs, second_per_grid_t=2 * INTERVAL)
    assert d.prompt_tokens == want.prompt_tokens
    assert d.text == ros_text(want.text)
    # the video has N / 2 temporal groups of an image's tokens each; the image prompt has one
    gh, gw = core.grid
    per_group = (gh // 2) * (gw // 2)
    image = expect(core, rgbs[-1:])
    assert d.prompt_tokens - image.prompt_tokens == (N // 2 - 1) * per_group


def test_service_without_image_describes_the_video_at_its_real_spacing(client, core):
    """Frames 1 s apart, of different camera sizes: the model is told 2 s per pair of frames.

    Not 2 x video_interval_s (1 s): the real spacing counts.
    """
    restart_video(client)
    msgs, rgbs = frames(N, spacing=1.0, sizes=((120, 160), (96, 128), (60, 80)), seed=20)
    feed(client, msgs[:-1])
    r = describe_until(client, about(msgs[-1]), repeat=msgs[-1])
    assert r.success, r.message
    d = r.description
    assert d.trigger == 'service'
    assert same_stamp(d.header.stamp, msgs[-1].header.stamp)
    want = expect(core, rgbs, second_per_grid_t=2.0)
    assert (d.prompt_tokens, d.text) == (want.prompt_tokens, ros_text(want.text))
    nominal = expect(core, rgbs, second_per_grid_t=2 * INTERVAL)
    assert ros_text(nominal.text) != d.text, \
        'the tiny model no longer tells the two spacings apart'
    # the next request (no new frame) describes the same video again
    again = client.describe()
    assert again.success and again.description.text == d.text


def test_request_image_is_an_image_in_video_mode(client, core):
    rgb = picture(seed=40)
    r = client.describe(image=image_msg(rgb, 'bgr8', frame_id='request'))
    assert r.success, r.message
    want = expect(core, [rgb])
    assert (r.description.prompt_tokens, r.description.text) == \
        (want.prompt_tokens, ros_text(want.text))
    assert r.description.header.frame_id == 'request'


def test_corrupt_frame_fails_the_video_and_leaves_the_buffer(client, node):
    restart_video(client)
    errors = counter(client, 'image_errors')
    mark = len(node.output())
    msgs, _ = frames(N + 1, seed=50)
    bad = msgs[1]
    bad.data = bytes(bad.data)[:-10]
    feed(client, msgs[:N - 1])
    r = describe_until(client, about(msgs[N - 1]), repeat=msgs[N - 1])
    assert not r.success
    st = bad.header.stamp
    assert r.message.startswith(
        f'bad image: video frame 2 of 4 (stamp {st.sec}.{st.nanosec:09d}): '), r.message
    assert 'bytes' in r.message
    client.wait_counter('image_errors', errors + 1)
    node.wait_for_log(r'video from /video_cam/image_raw not described: bad image', 30,
                      start=mark)
    # the corrupt frame left the buffer: one more good frame makes a good video
    r = client.describe()
    assert not r.success and r.message.startswith('no video yet: 3 of'), r.message
    r = describe_until(client, about(msgs[N]), repeat=msgs[N])
    assert r.success, r.message
    assert same_stamp(r.description.header.stamp, msgs[N].header.stamp)


def test_stale_newest_frame_is_refused(client):
    restart_video(client)
    stale = counter(client, 'stale_refused')
    msgs, _ = frames(N, start_ns=time.time_ns() - 20 * S, seed=60)
    feed(client, msgs[:-1])
    r = describe_until(client, about(msgs[-1]), repeat=msgs[-1])
    assert not r.success and r.message.startswith('stale image'), r.message
    st = msgs[-1].header.stamp
    assert f'(stamp {st.sec}.{st.nanosec:09d})' in r.message
    client.wait_counter('stale_refused', stale + 1)


def test_video_frames_changed_at_run_time(client, core):
    (bad,) = client.set_params(video_frames=1)
    assert not bad.successful and 'at least 2' in bad.reason
    try:
        assert client.set_params(video_frames=0)[0].successful
        msgs, rgbs = frames(1, seed=70)
        r = describe_until(client, about(msgs[-1]), repeat=msgs[-1])
        assert r.success, r.message
        want = expect(core, rgbs)
        assert (r.description.prompt_tokens, r.description.text) == \
            (want.prompt_tokens, ros_text(want.text))
    finally:
        assert client.set_params(video_frames=N)[0].successful


# -- the ring buffer without a graph ----------------------------------------------------------
def _msg(ns):
    ns = int(round(ns))
    return SimpleNamespace(header=SimpleNamespace(
        stamp=SimpleNamespace(sec=ns // S, nanosec=ns % S)))


def _store(video_frames=4, interval_s=0.5, max_gap_s=6.0):
    from qwen_vl_ros.ros.frames import FrameStore
    return FrameStore(False, video_frames, interval_s, max_gap_s)


def _times(store):
    return [s.time_ns / S for s in store.video()[1]]


def test_ring_keeps_frames_at_least_the_interval_apart():
    store = _store()
    for t in (10.0, 10.1, 10.4, 10.5, 10.99, 11.0, 11.6, 12.2, 12.7):
        store.put(_msg(t * S), None)
    assert store.video()[0] == 4
    assert _times(store) == [11.0, 11.6, 12.2, 12.7]
    assert store.newest().time_ns == int(12.7 * S)


def test_ring_restarts_when_time_goes_back_or_jumps():
    store = _store()
    for t in (100.0, 100.5, 101.0, 99.0):
        store.put(_msg(t * S), None)
    assert _times(store) == [99.0]
    for t in (99.5, 110.0):
        store.put(_msg(t * S), None)
    assert _times(store) == [110.0]


def test_ring_resize_discard_and_image_mode():
    store = _store()
    for t in range(6):
        store.put(_msg(t * S), None)
    store.configure_video(2, 0.5, 6.0)
    assert _times(store) == [4.0, 5.0]
    store.configure_video(3, 0.5, 6.0)
    store.put(_msg(6 * S), None)
    assert _times(store) == [4.0, 5.0, 6.0]
    store.discard(store.video()[1][1])
    assert _times(store) == [4.0, 6.0]
    store.configure_video(0, 0.5, 6.0)
    store.put(_msg(7 * S), None)
    assert store.video() == (0, [])


def test_zero_stamps_use_the_arrival_time():
    store = _store()
    for t in (1.0, 1.2, 1.6):
        store.put(_msg(0), SimpleNamespace(nanoseconds=int(t * S)))
    assert _times(store) == [1.0, 1.6]


def test_second_per_grid_t_is_twice_the_mean_spacing_rounded():
    from qwen_vl_ros.ros.frames import Source, second_per_grid_t

    def video(*times):
        return [Source(_msg(t * S), False, True, i + 1) for i, t in enumerate(times)]

    assert second_per_grid_t(video(0.0, 0.5, 1.0, 1.5)) == 1.0
    assert second_per_grid_t(video(0.0, 0.4999, 0.9998, 1.4997)) == 1.0   # stamp jitter
    assert second_per_grid_t(video(0.0, 0.6, 1.1, 1.8)) == 1.2
    assert second_per_grid_t(video(3.0, 3.0)) is None


def test_nul_in_generated_text_is_not_cut_off():
    from qwen_vl_ros.ros.convert import ros_string, text_msg
    assert ros_string('a\x00b') == 'a\ufffdb'
    assert text_msg('door\x00open').data == 'door\ufffdopen'
