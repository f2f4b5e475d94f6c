"""qwen-vl-export --weights int8 (issue 16): 8-bit MatMul weights, float activations.

The tiny checkpoint exported both ways by the command itself: every weight MatMul of the int8
build's decoder layers and post model is onnxruntime's MatMulNBits with 8-bit weights, and
teacher-forced over the float32 build's greedy answers the int8 build picks the same next token
almost everywhere, with nearly the same logits.
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('torch', reason='the exporter needs torch (pip install .[export])')
onnx = pytest.importorskip('onnx')

from qwen_vl_ros.vlm import GenerationOptions, Pipeline  # noqa: E402


@pytest.fixture(scope='module')
def int8_dir(tiny_hf_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp('int8') / 'onnx'
    script = Path(sys.executable).parent / 'qwen-vl-export'
    cmd = [str(script)] if script.exists() else [sys.executable, '-m', 'qwen_vl_ros.export.cli']
    subprocess.run(cmd + ['--hf-dir', str(tiny_hf_dir), '--out', str(out), '--weights', 'int8'],
                   check=True, capture_output=True, timeout=300)
    return out


def _constant_matmuls(graph) -> list:
    """MatMul nodes whose B is a stored weight (attention's act x act MatMuls have none)."""
    weights = {t.name for t in graph.initializer}
    return [n for n in graph.node if n.op_type == 'MatMul' and n.input[1] in weights]


def test_every_weight_matmul_is_8bit(int8_dir, tiny_onnx_dir):
    # the float32 build's groups have weight MatMuls; the int8 build's have none left, each
    # became an 8-bit MatMulNBits whose weight is stored as uint8 (the tiny model's files are
    # mostly rope tables, so their size says little here: bench/FULLSIZE.md has the real one)
    for name in ('qwen2_5_vl_p320_l0_together_g0.onnx', 'qwen2_5_vl_p320_l1_together_g1.onnx',
                 'qwen2_5_vl_post.onnx'):
        f32 = onnx.load(str(tiny_onnx_dir / name), load_external_data=False).graph
        i8 = onnx.load(str(int8_dir / name), load_external_data=False).graph
        assert _constant_matmuls(f32) and not _constant_matmuls(i8), name
        nbits = [n for n in i8.node if n.op_type == 'MatMulNBits']
        assert len(nbits) == len(_constant_matmuls(f32)), name
        stored = {t.name: t.data_type for t in i8.initializer}
        for node in nbits:
            assert dict((a.name, a.i) for a in node.attribute)['bits'] == 8
            assert stored[node.input[1]] == onnx.TensorProto.UINT8


def test_int8_follows_float32_teacher_forced(int8_dir, tiny_onnx_dir):
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (448, 448, 3), dtype=np.uint8) for _ in range(2)]
    f32 = Pipeline.load(str(tiny_onnx_dir), backend='onnxruntime', threads=1,
                        progress=lambda m: None)
    i8 = Pipeline.load(str(int8_dir), backend='onnxruntime', threads=1, progress=lambda m: None)
    agree, cosine = [], []
    for frame in frames:
        for prompt in ('Describe this image.', 'What is on the left?'):
            answer = f32.describe([frame], prompt, GenerationOptions(max_new_tokens=12,
                                                                     greedy=True))
            want = f32.score([frame], prompt, answer.token_ids)
            got = i8.score([frame], prompt, answer.token_ids)
            agree += list(got.argmax(-1) == want.argmax(-1))
            cosine += list(np.sum(got * want, -1)
                           / (np.linalg.norm(got, axis=-1) * np.linalg.norm(want, axis=-1)))
    assert np.mean(agree) >= 0.9, f'next-token agreement {np.mean(agree):.2f}'
    assert min(cosine) > 0.99, f'logit cosine min {min(cosine):.4f}'
