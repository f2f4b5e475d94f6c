"""qwen-vl-describe --stream with --json, and options that the chosen way of running ignores.

`--stream --json` is JSON Lines: {"delta": ...} per piece as generated, then the result object
--json prints without --stream (same tokens), for each question. `--stream` with --bag or
--detect, --follow-up with --bag, bag-only options without --bag: one error line, exit 2, no
output, nothing run. Run in this process (main() is the console script's entry point).
"""

import json

import cv2
import numpy as np
import pytest

from qwen_vl_ros.bagtools import write_camera_bag
from qwen_vl_ros.cli.describe import main

PROG = 'qwen-vl-describe'


def run(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def image(tmp_path):
    rng = np.random.default_rng(7)
    path = tmp_path / 'a.png'
    cv2.imwrite(str(path), rng.integers(0, 255, (64, 80, 3), dtype=np.uint8))
    return path


def lines_of(out: str) -> list:
    return [json.loads(line) for line in out.splitlines()]


def test_stream_json_is_deltas_then_the_result_object(tiny_onnx_dir, image, capsys):
    common = ['--model-dir', tiny_onnx_dir, '--image', image, '--greedy',
              '--max-new-tokens', 12, '--json']
    code, out, err = run(capsys, *common)
    assert code == 0, err
    [plain] = lines_of(out)
    code, out, err = run(capsys, *common, '--stream')
    assert code == 0, err
    lines = lines_of(out)
    *deltas, result = lines
    assert deltas, 'no delta lines'
    assert all(set(d) == {'delta'} and d['delta'] for d in deltas), deltas
    assert ''.join(d['delta'] for d in deltas) == result['text']
    assert result['token_ids'] == plain['token_ids'] and result['text'] == plain['text']
    assert set(result) == set(plain)       # the same result object as without --stream


def test_stream_json_with_follow_ups_gives_each_question_its_deltas(tiny_onnx_dir, image,
                                                                    capsys):
    code, out, err = run(capsys, '--model-dir', tiny_onnx_dir, '--image', image, '--greedy',
                         '--max-new-tokens', 6, '--json', '--stream', '--follow-up',
                         'And the colours?', '--follow-up', 'Anything else?')
    assert code == 0, err
    groups, deltas = [], []
    for line in lines_of(out):
        if 'delta' in line:
            deltas.append(line['delta'])
        else:
            groups.append((''.join(deltas), line))
            deltas = []
    assert not deltas, 'delta lines after the last result'
    assert [r['prompt'] for _, r in groups] == ['Describe this image.', 'And the colours?',
                                               'Anything else?']
    for joined, r in groups:
        assert joined == r['text']


def test_stream_text_joins_to_the_plain_answer(tiny_onnx_dir, image, capsys):
    common = ['--model-dir', tiny_onnx_dir, '--image', image, '--greedy',
              '--max-new-tokens', 12]
    code, plain, err = run(capsys, *common)
    assert code == 0, err
    code, streamed, err = run(capsys, *common, '--stream')
    assert code == 0, err
    assert streamed == plain


def assert_refused(capsys, args, words):
    code, out, err = run(capsys, *args)
    assert code == 2, err
    assert out == ''
    errors = [line for line in err.splitlines() if line.startswith(f'{PROG}: error: ')]
    assert len(errors) == 1 and err.strip() == errors[0], err   # nothing else ran
    assert words in errors[0], errors[0]
    return errors[0]


def test_stream_with_bag_is_refused_with_the_reason(tiny_onnx_dir, tmp_path, capsys):
    write_camera_bag(tmp_path / 'bag', frames=3, width=64, height=48)
    bag = ['--model-dir', tiny_onnx_dir, '--bag', tmp_path / 'bag', '--max-new-tokens', 2]
    code, out, err = run(capsys, *bag)         # the bag itself is fine
    assert code == 0 and len(out.splitlines()) == 1, err   # --every 1 s of 0.3 s
    line = assert_refused(capsys, bag + ['--stream'], '--stream cannot be used with --bag')
    assert 'one JSON line per frame' in line
    assert_refused(capsys, bag + ['--stream', '--json'], '--stream cannot be used with --bag')
    assert_refused(capsys, bag + ['--follow-up', 'And?'], '--follow-up cannot be used with --bag')
    assert_refused(capsys, bag + ['--detect', 'cup'], '--detect cannot be used with --bag')


def test_other_ignored_options_are_refused(tiny_onnx_dir, image, capsys):
    one = ['--model-dir', tiny_onnx_dir, '--image', image]
    assert_refused(capsys, one + ['--detect', 'cup', '--stream'],
                   '--stream cannot be used with --detect')
    assert_refused(capsys, one + ['--refer', 'the cup', '--follow-up', 'And?'],
                   '--follow-up cannot be used with --refer')
    assert_refused(capsys, one + ['--detect', 'cup', '--choices', 'yes,no'],
                   '--choices cannot be used with --detect')
    assert_refused(capsys, one + ['--detect', 'cup', '--prompt', 'Where is the cup?'],
                   '--prompt cannot be used with --detect')
    for option, value in (('--topic', '/camera'), ('--every', 2), ('--out', 'x.jsonl')):
        assert_refused(capsys, one + [option, value],
                       f'{option} cannot be used with --image: it is for --bag only')
    # no --image either: the refusal names what was asked for (a new user saw '--image' here)
    assert_refused(capsys, ['--model-dir', tiny_onnx_dir, '--out', 'x.jsonl'],
                   '--out cannot be used with a question without --image or --bag: it is for '
                   '--bag only')
