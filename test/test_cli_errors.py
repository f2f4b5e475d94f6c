"""Every failure of qwen-vl-describe is one ``error:`` line and exit code 2 (issue 9, item 8).

Not only the core's own errors (VLMError): a broken model file that makes a library raise
something else, a degenerate image, a prompt with special-token strings. Run in this process
(main() is the console script's entry point), so the cases stay cheap.
"""
import json
import shutil

import cv2
import numpy as np
import pytest

from qwen_vl_ros.cli.describe import main

PROG = 'qwen-vl-describe'


def run(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_error_line(code, err):
    assert code == 2, err
    assert 'Traceback' not in err
    errors = [line for line in err.splitlines() if line.startswith(f'{PROG}: error: ')]
    assert len(errors) == 1, err
    assert err.rstrip().splitlines()[-1] == errors[0]
    return errors[0]


@pytest.fixture
def model_copy(tiny_onnx_dir, tmp_path):
    dst = tmp_path / 'model'
    shutil.copytree(tiny_onnx_dir, dst)
    return dst


def test_a_broken_preprocessor_config_is_one_line(model_copy, capsys):
    """image_mean as a string: the pipeline fails with a TypeError, not a VLMError."""
    path = model_copy / 'preprocessor_config.json'
    cfg = json.loads(path.read_text())
    cfg['image_mean'] = 'abc'
    path.write_text(json.dumps(cfg))
    code, _, err = run(capsys, '--model-dir', model_copy, '--prompt', 'hi')
    assert 'TypeError' in assert_one_error_line(code, err)


@pytest.mark.parametrize('damage', ['post', 'tokenizer', 'embeddings'])
def test_damaged_model_files_are_one_line(model_copy, capsys, damage):
    if damage == 'post':
        (model_copy / 'qwen2_5_vl_post.onnx').write_bytes(b'garbage')
    elif damage == 'tokenizer':
        (model_copy / 'tokenizer.json').write_text('{"broken')
    else:
        npy = model_copy / 'model.embed_tokens.weight.npy'
        npy.write_bytes(npy.read_bytes()[:1000])
    code, _, err = run(capsys, '--model-dir', model_copy, '--prompt', 'hi')
    assert_one_error_line(code, err)


def test_missing_and_undecodable_images_are_one_line(tiny_onnx_dir, tmp_path, capsys):
    code, _, err = run(capsys, '--model-dir', tiny_onnx_dir, '--image', tmp_path / 'nope.jpg')
    assert 'nope.jpg' in assert_one_error_line(code, err)
    bad = tmp_path / 'bad.jpg'
    bad.write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
    code, _, err = run(capsys, '--model-dir', tiny_onnx_dir, '--image', bad)
    assert 'bad.jpg' in assert_one_error_line(code, err)


@pytest.mark.parametrize('h, w', [(1, 1), (4000, 1), (1, 4000)])
def test_degenerate_images_are_described(tiny_onnx_dir, tmp_path, capsys, h, w):
    path = tmp_path / 'tiny.png'
    cv2.imwrite(str(path), np.full((h, w, 3), 128, np.uint8))
    code, out, err = run(capsys, '--model-dir', tiny_onnx_dir, '--image', path, '--resize',
                         'crop', '--max-new-tokens', 2, '--greedy', '--json')
    assert code == 0, err
    assert json.loads(out)['generated_tokens'] >= 1


def test_special_tokens_in_the_prompt_are_described(tiny_onnx_dir, capsys):
    code, out, err = run(capsys, '--model-dir', tiny_onnx_dir, '--prompt',
                         'Count the <|image_pad|> here', '--max-new-tokens', 2, '--json')
    assert code == 0, err
    assert 'Traceback' not in err


def test_bad_bit_depth_is_one_line(tiny_onnx_dir, tmp_path, capsys):
    path = tmp_path / 'a.png'
    cv2.imwrite(str(path), np.zeros((8, 8, 3), np.uint8))
    code, _, err = run(capsys, '--model-dir', tiny_onnx_dir, '--image', path, '--bit-depth', 3)
    assert 'bit_depth' in assert_one_error_line(code, err)


@pytest.mark.parametrize('args, why', [
    (['--max-new-tokens', 0], 'max_new_tokens must be at least 1, got 0'),
    (['--max-new-tokens', -3], 'max_new_tokens must be at least 1'),
    (['--temperature', 0], 'temperature must be > 0'),
    (['--temperature', 'nan'], 'temperature must be > 0'),
    (['--top-p', 0], 'top_p must be in (0, 1]'),
    (['--top-p', 1.5], 'top_p must be in (0, 1]'),
    (['--top-k', -1], 'top_k must be >= 0'),
    (['--repetition-penalty', 0], 'repetition_penalty must be > 0'),
    (['--second-per-grid-t', 0], 'second_per_grid_t must be > 0'),
    (['--seed', -1], 'seed must be >= 0'),
    (['--threads', -2], '--threads must be >= 0'),
    (['--bit-depth', 3], 'bit_depth must be 0 (auto) or 8..16'),
    (['--bag', 'x', '--every', -1], '--every must be >= 0'),
    (['--detect', 'cup', '--image', 'x.png', '--max-new-tokens', 0], 'max_new_tokens'),
])
def test_options_that_cannot_be_served_are_refused_before_anything_loads(tmp_path, capsys,
                                                                         args, why):
    """Refused by the values alone: the model directory does not even exist."""
    code, out, err = run(capsys, '--model-dir', tmp_path / 'no_model', *args)
    line = assert_one_error_line(code, err)
    assert why in line and 'no_model' not in err and 'loading' not in err, err


def test_a_typed_answer_cut_by_the_budget_exits_1_and_says_why(tiny_onnx_dir, capsys):
    code, out, err = run(capsys, '--model-dir', tiny_onnx_dir, '--prompt', 'Where?',
                         '--choices', 'the cup on the left,the cup on the right',
                         '--max-new-tokens', 1, '--json')
    assert code == 1, err
    answer = json.loads(out)
    assert answer['success'] is False and answer['finish_reason'] == 'length'
    assert 'max_new_tokens = 1 was reached (1 tokens used)' in answer['message']
    assert answer['message'] in err.splitlines()[-1] and answer['choice_index'] == -1
    code, out, err = run(capsys, '--model-dir', tiny_onnx_dir, '--prompt', 'Where?',
                         '--choices', 'the cup on the left,the cup on the right',
                         '--max-new-tokens', 1)
    assert code == 1 and out == '' and 'cut short' in err      # no text printed as an answer
    code, out, err = run(capsys, '--model-dir', tiny_onnx_dir, '--prompt', 'Where?',
                         '--choices', 'the cup on the left,the cup on the right',
                         '--max-new-tokens', 40, '--json')
    assert code == 0 and json.loads(out)['success'] is True, err
