"""qwen-vl-describe --bag: a recording described straight through the core, no ROS graph.

Bags are written with rosbags (bagtools); the tiny exported model answers. Checked: which frames
--every picks, each line's stamp / frame_id / bag time, results equal to the pipeline's own on
the same frame, bad frames as error lines (not a crash), bad topics and bags as clear errors.
"""

from __future__ import annotations

import json
import time

import numpy as np

from qwen_vl_ros.bagtools import (COMPRESSED_IMAGE, IMAGE, compressed_message, image_message,
                                  moving_shapes, typestore, write_bag, write_camera_bag)
from qwen_vl_ros.cli.annotate_bag import select_frames
from qwen_vl_ros.cli.describe import main as describe_main

W, H = 96, 64


def run(capsys, *args):
    """Run qwen-vl-describe in this process; (exit code, stderr)."""
    code = describe_main([str(a) for a in args])
    return code, capsys.readouterr().err


def read_jsonl(path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_picks_one_frame_per_interval_of_bag_time():
    def msgs(times_ms):
        return [(None, int(t * 1e6), b'') for t in times_ms]

    picked = [t // 1_000_000 for _, _, t, _ in select_frames(msgs(range(0, 3000, 100)), 1.0)]
    assert picked == [0, 1000, 2000]
    # a gap: the first frame at or after each multiple, never one frame twice
    picked = [t // 1_000_000 for _, _, t, _ in select_frames(
        msgs([0, 400, 1300, 3100, 3200, 4050]), 1.0)]
    assert picked == [0, 1300, 3100, 4050]
    assert len(list(select_frames(msgs(range(0, 1000, 100)), 0))) == 10
    indices = [i for i, _, _, _ in select_frames(msgs(range(0, 3000, 100)), 0.5)]
    assert indices == [0, 5, 10, 15, 20, 25]


def test_raw_bag_every_second_with_a_bad_frame(tmp_path, tiny_onnx_dir, capsys):
    """rgb8 frames at 10 Hz; the frame at 1.0 s has an encoding the core does not read."""
    store = typestore()
    start = 1_700_000_000_000_000_000
    messages = []
    for i in range(30):
        t = start + i * 100_000_000
        msg = image_message(store, moving_shapes(i, W, H), t - 5_000_000, 'cam_left', 'rgb8')
        if i == 10:
            msg.encoding = '32FC1'
        messages.append(('/left/image_raw', IMAGE, t, msg))
    write_bag(tmp_path / 'bag', messages, storage='sqlite3', store=store)
    out = tmp_path / 'out.jsonl'

    code, err = run(capsys, '--model-dir', tiny_onnx_dir, '--bag', tmp_path / 'bag',
                    '--every', 1.0, '--out', out, '--greedy', '--max-new-tokens', 5)
    assert code == 0, err
    lines = read_jsonl(out)
    assert [d['index'] for d in lines] == [0, 10, 20]
    assert [d['bag_time_ns'] for d in lines] == [start, start + 10**9, start + 2 * 10**9]
    assert [d['offset_s'] for d in lines] == [0.0, 1.0, 2.0]
    for d in lines:
        assert d['topic'] == '/left/image_raw' and d['frame_id'] == 'cam_left'
        ns = d['stamp']['sec'] * 10**9 + d['stamp']['nanosec']
        assert ns == d['bag_time_ns'] - 5_000_000
    bad = lines[1]
    assert 'unsupported image encoding' in bad['error'] and '32FC1' in bad['error']
    assert 'text' not in bad
    for d in (lines[0], lines[2]):
        assert 'error' not in d
        assert d['prompt'] == 'Describe this image.'
        assert 1 <= d['generated_tokens'] <= 5 and len(d['token_ids']) == d['generated_tokens']
        assert d['prompt_tokens'] > 0 and d['finish_reason'] in ('stop', 'length')
        assert set(d['timings_ms']) >= {'vision', 'prefill', 'decode'}
    assert '3 frame(s) of /left/image_raw: 2 described, 1 error(s)' in err

    # straight through the core: the same frame gives the pipeline's own greedy answer
    from qwen_vl_ros.vlm import GenerationOptions, Pipeline
    pipe = Pipeline.load(str(tiny_onnx_dir), backend='onnxruntime')
    ref = pipe.describe([moving_shapes(20, W, H)], 'Describe this image.',
                        GenerationOptions(max_new_tokens=5, greedy=True))
    assert lines[2]['token_ids'] == ref.token_ids and lines[2]['text'] == ref.text


def test_compressed_mcap_every_frame_with_corrupt_jpegs(tmp_path, tiny_onnx_dir, capsys):
    store = typestore()
    start = time.time_ns()
    messages = []
    for i in range(5):
        t = start + i * 200_000_000
        rgb = moving_shapes(i, W, H)
        if i == 1:      # truncated JPEG
            ok_msg = compressed_message(store, rgb, t, 'cam')
            msg = compressed_message(store, None, t, 'cam',
                                     data=ok_msg.data[:len(ok_msg.data) // 2].tobytes())
        elif i == 3:    # not an image at all
            msg = compressed_message(store, None, t, 'cam', data=b'hello, not a jpeg')
        else:
            msg = compressed_message(store, rgb, t, 'cam')
        messages.append(('/cam/image/compressed', COMPRESSED_IMAGE, t, msg))
    # a non-image topic in the same bag: the image topic is found without --topic
    String = store.types['std_msgs/msg/String']
    messages.append(('/chatter', 'std_msgs/msg/String', start + 1, String(data='hi')))
    write_bag(tmp_path / 'bag', messages, storage='mcap', store=store)
    out = tmp_path / 'out.jsonl'

    code, err = run(capsys, '--model-dir', tiny_onnx_dir, '--bag', tmp_path / 'bag',
                    '--every', 0, '--out', out, '--max-new-tokens', 3, '--prompt', 'What moves?')
    assert code == 0, err
    lines = read_jsonl(out)
    assert [d['index'] for d in lines] == [0, 1, 2, 3, 4]
    assert [('error' in d) for d in lines] == [False, True, False, True, False]
    assert 'JPEG' in lines[1]['error']
    assert 'cannot decode' in lines[3]['error']
    assert all(d['prompt'] == 'What moves?' for d in lines)
    assert '5 frame(s) of /cam/image/compressed: 3 described, 2 error(s)' in err


def test_only_bad_frames_exit_1(tmp_path, tiny_onnx_dir, capsys):
    store = typestore()
    msg = image_message(store, np.zeros((H, W, 3), np.uint8), 1, 'cam')
    msg.data = msg.data[:100]     # far shorter than height * step
    write_bag(tmp_path / 'bag', [('/img', IMAGE, 1, msg)], store=store)
    code, err = run(capsys, '--model-dir', tiny_onnx_dir, '--bag', tmp_path / 'bag',
                    '--out', tmp_path / 'o.jsonl', '--max-new-tokens', 2)
    assert code == 1, err
    assert 'error' in read_jsonl(tmp_path / 'o.jsonl')[0]


def test_bad_bag_and_topic_are_clear_errors(tmp_path, capsys):
    bag = write_camera_bag(tmp_path / 'bag', frames=2, width=32, height=24)
    model = tmp_path / 'no_model'    # the topic is checked before the model is loaded
    code, err = run(capsys, '--model-dir', model, '--bag', bag.path, '--topic', '/nope')
    assert code == 2 and 'topic /nope is not in the bag' in err and '/camera/image_raw' in err
    code, err = run(capsys, '--model-dir', model, '--bag', tmp_path / 'missing')
    assert code == 2 and 'no bag at' in err
    code, err = run(capsys, '--model-dir', model, '--bag', bag.path, '--every', -1)
    assert code == 2 and '--every' in err
    code, err = run(capsys, '--model-dir', model, '--bag', bag.path)
    assert code == 2 and 'no_model' in err      # the model directory's own error
