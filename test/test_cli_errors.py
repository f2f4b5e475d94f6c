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
