"""qwen-vl-export --weights int8 (issue 16): 8-bit MatMul weights.

The tiny checkpoint exported both ways by the command itself: every weight MatMul (or Gemm) of
the int8 build's decoder layers, post model and vision tower is onnxruntime's MatMulNBits with
8-bit weights, and
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


# float32 logit gap between the best two tokens above which int8 must pick the same one
DECISIVE = 0.25


@pytest.fixture(scope='module')
def int8_dir(tiny_hf_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp('int8') / 'onnx'
    script = Path(sys.executable).parent / 'qwen-vl-export'
    cmd = [str(script)] if script.exists() else [sys.executable, '-m', 'qwen_vl_ros.export.cli']
    subprocess.run(cmd + ['--hf-dir', str(tiny_hf_dir), '--out', str(out), '--weights', 'int8'],
                   check=True, capture_output=True, timeout=300)
    return out


def _constant_matmuls(graph) -> list:
    """MatMul and Gemm nodes whose B is a stored weight (attention's act x act MatMuls: none)."""
    weights = {t.name for t in graph.initializer}
    return [n for n in graph.node if n.op_type in ('MatMul', 'Gemm') and n.input[1] in weights]


def test_every_weight_matmul_is_8bit(int8_dir, tiny_onnx_dir):
    # the float32 build's groups have weight MatMuls (the vision tower's Linears are Gemms);
    # the int8 build's have none left, each became an 8-bit MatMulNBits whose weight is stored
    # as uint8 (the tiny model's files are mostly rope tables, so their size says little here:
    # bench/FULLSIZE.md has the real one)
    for name in ('qwen2_5_vl_p320_l0_together_g0.onnx', 'qwen2_5_vl_p320_l1_together_g1.onnx',
                 'qwen2_5_vl_post.onnx', 'qwen2_5_vl_vision_448x448.onnx'):
        f32 = onnx.load(str(tiny_onnx_dir / name), load_external_data=False).graph
        i8 = onnx.load(str(int8_dir / name), load_external_data=False).graph
        assert _constant_matmuls(f32) and not _constant_matmuls(i8), name
        nbits = [n for n in i8.node if n.op_type == 'MatMulNBits']
        assert len(nbits) == len(_constant_matmuls(f32)), name
        stored = {t.name: t.data_type for t in i8.initializer}
        for node in nbits:
            assert dict((a.name, a.i) for a in node.attribute)['bits'] == 8
            assert stored[node.input[1]] == onnx.TensorProto.UINT8
    # the vision weights are an external file the runtime maps (and releases after each image)
    assert (int8_dir / 'qwen2_5_vl_vision_448x448.onnx.data').is_file()


@pytest.mark.parametrize('trans_b,bias', [(1, True), (0, True), (1, False)])
def test_gemm_becomes_matmul_with_the_same_output(trans_b, bias):
    from onnx import TensorProto, helper, numpy_helper

    from qwen_vl_ros.export.quantize import gemm_to_matmul
    ort = pytest.importorskip('onnxruntime')
    rng = np.random.default_rng(trans_b + 2 * bias)
    w = rng.standard_normal((24, 16) if trans_b else (16, 24)).astype(np.float32)
    inits = [numpy_helper.from_array(w, 'W')]
    inputs = ['x', 'W']
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(24).astype(np.float32), 'b'))
        inputs.append('b')
    # a second, scaled Gemm that must be left alone (alpha != 1)
    nodes = [helper.make_node('Gemm', inputs, ['y'], transB=trans_b),
             helper.make_node('Gemm', inputs, ['z'], transB=trans_b, alpha=0.5)]
    graph = helper.make_graph(
        nodes, 'g', [helper.make_tensor_value_info('x', TensorProto.FLOAT, [5, 16])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [5, 24]) for n in 'yz'], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
    x = rng.standard_normal((5, 16)).astype(np.float32)

    def run(m):
        sess = ort.InferenceSession(m.SerializeToString(), providers=['CPUExecutionProvider'])
        return sess.run(None, {'x': x})

    before = run(model)
    assert gemm_to_matmul(model) == 1
    assert [n.op_type for n in model.graph.node].count('Gemm') == 1
    after = run(model)
    want = x @ (w.T if trans_b else w) + (numpy_helper.to_array(inits[1]) if bias else 0)
    np.testing.assert_allclose(before[0], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(after[0], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(after[1], before[1])


def test_int8_follows_float32_teacher_forced(int8_dir, tiny_onnx_dir):
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (448, 448, 3), dtype=np.uint8) for _ in range(2)]
    f32 = Pipeline.load(str(tiny_onnx_dir), backend='onnxruntime', threads=1,
                        progress=lambda m: None)
    i8 = Pipeline.load(str(int8_dir), backend='onnxruntime', threads=1, progress=lambda m: None)
    agree, cosine, gaps = [], [], []
    for frame in frames:
        for prompt in ('Describe this image.', 'What is on the left?'):
            answer = f32.describe([frame], prompt, GenerationOptions(max_new_tokens=12,
                                                                     greedy=True))
            want = f32.score([frame], prompt, answer.token_ids)
            got = i8.score([frame], prompt, answer.token_ids)
            agree += list(got.argmax(-1) == want.argmax(-1))
            top = np.sort(want, -1)[:, -2:]
            gaps += list(top[:, 1] - top[:, 0])
            cosine += list(np.sum(got * want, -1)
                           / (np.linalg.norm(got, axis=-1) * np.linalg.norm(want, axis=-1)))
    # a random tiny model has many near-ties (its logits span ~1.5): every clear float32 choice
    # (best two logits DECISIVE apart) is kept, and most of the rest
    flipped = [round(float(g), 3) for g, a in zip(gaps, agree) if not a]
    assert all(g < DECISIVE for g in flipped), f'clear choices flipped (top-2 gaps {flipped})'
    assert np.mean(agree) >= 0.85, f'next-token agreement {np.mean(agree):.2f}'
    assert min(cosine) > 0.99, f'logit cosine min {min(cosine):.4f}'
