"""The shape groups of a layer hold its weights once in memory (issue 16, runtime/onnx.py).

Two groups (one row, 64 rows) over one 64 MB MatMul weight, saved the way qwen-vl-export saves
a layer (SharedWeights: one external data file referenced by both graphs). Opened with the
pipeline's OnnxSession in a fresh process, both groups run and the process grows by about one
copy; opened as two plain onnxruntime sessions (the baseline, same process kind) it grows by
two. Outputs equal numpy's product. The same layer quantized as `--weights int8` does (the
decode group keeps a packed copy, the prefill group reads the file and hands its pages back)
also ends at one copy, and a vision tower's weights leave the process after each run.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip('onnx')
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from qwen_vl_ros.export.shared_weights import SharedWeights  # noqa: E402

HIDDEN, OUT = 2048, 8192          # float32: 64 MiB of weight
MIB = 1 << 20

PROBE = r'''
import json, sys
import numpy as np
import onnx  # read by OnnxSession on open: imported before the count, as onnxruntime is
import onnxruntime as ort
from qwen_vl_ros.vlm.runtime.onnx import OnnxSession

def rss_mib():
    with open('/proc/self/status') as f:
        return next(int(l.split()[1]) for l in f if l.startswith('VmRSS')) / 1024

folder, mode = sys.argv[1], sys.argv[2]
paths = {0: f'{folder}/l_g0.onnx', 1: f'{folder}/l_g1.onnx'}
x = {g: np.random.default_rng(g).standard_normal((1, rows, 2048)).astype(np.float32)
     for g, rows in ((0, 1), (1, 64))}
before = rss_mib()
if mode in ('shared', 'vision', 'one'):
    if mode != 'shared':  # a one-group model (the 64-row graph): group -1, run as group 0
        paths, x = {-1: paths[1]}, {0: x[1]}
    role = 'vision' if mode == 'vision' else 'layer'
    session = OnnxSession(paths, ['CPUExecutionProvider'], 1, role=role)
    # prefill first, as the pipeline does: what it leaves resident is what a request costs
    outs = {g: session.run({'x': x[g]}, g)[0] for g in sorted(session.groups, reverse=True)}
else:
    plain = {g: ort.InferenceSession(p, providers=['CPUExecutionProvider'])
             for g, p in paths.items()}
    outs = {g: plain[g].run(None, {'x': x[g]})[0] for g in (0, 1)}
grown = rss_mib() - before
for g, out in outs.items():
    np.save(f'{folder}/{mode}_out{g}.npy', out)
print(json.dumps({'grown_mib': grown}))
'''


def _layer(folder: Path, int8: bool = False) -> np.ndarray:
    weight = np.random.default_rng(0).standard_normal((HIDDEN, OUT)).astype(np.float32)
    with SharedWeights(folder / 'l.weights') as shared:
        for group, rows in ((0, 1), (1, 64)):
            x = helper.make_tensor_value_info('x', TensorProto.FLOAT, [1, rows, HIDDEN])
            y = helper.make_tensor_value_info('y', TensorProto.FLOAT, [1, rows, OUT])
            graph = helper.make_graph([helper.make_node('MatMul', ['x', 'W'], ['y'])], 'layer',
                                      [x], [y], [numpy_helper.from_array(weight, 'W')])
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
            if int8:  # what qwen-vl-export --weights int8 does to every weight MatMul
                from qwen_vl_ros.export.quantize import quantize_matmul_int8
                model = quantize_matmul_int8(model)
            shared.save(model, folder / f'l_g{group}.onnx')
    return weight


def _grown(folder: Path, mode: str) -> float:
    out = subprocess.run([sys.executable, '-c', PROBE, str(folder), mode], check=True,
                         capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])['grown_mib']


def test_two_groups_hold_one_copy_of_the_weights(tmp_path):
    weight = _layer(tmp_path)
    assert (tmp_path / 'l.weights').stat().st_size == weight.nbytes  # written once
    copy_mib = weight.nbytes / MIB
    plain, shared = _grown(tmp_path, 'plain'), _grown(tmp_path, 'shared')
    # the baseline really holds two copies here, so the check below means something
    assert plain > 1.7 * copy_mib, f'plain onnxruntime grew {plain:.0f} MiB'
    assert shared < 1.4 * copy_mib, \
        f'shared grew {shared:.0f} MiB for {copy_mib:.0f} MiB of weight ({plain:.0f} plain)'
    for g, rows in ((0, 1), (1, 64)):
        x = np.random.default_rng(g).standard_normal((1, rows, HIDDEN)).astype(np.float32)
        got = np.load(tmp_path / f'shared_out{g}.npy')
        np.testing.assert_allclose(got, x @ weight, rtol=1e-4, atol=1e-3)
        # packed and unpacked kernels sum in another order: equal to float32 rounding only
        np.testing.assert_allclose(got, np.load(tmp_path / f'plain_out{g}.npy'), rtol=1e-5,
                                   atol=1e-4)


def test_int8_groups_hold_one_packed_copy(tmp_path):
    pytest.importorskip('onnxruntime.quantization.matmul_nbits_quantizer',
                        reason='this onnxruntime has no 8-bit MatMulNBits quantizer')
    weight = _layer(tmp_path, int8=True)
    copy_mib = (tmp_path / 'l.weights').stat().st_size / MIB   # 8-bit blocks + their scales
    assert copy_mib < 0.3 * weight.nbytes / MIB
    plain, shared = _grown(tmp_path, 'plain'), _grown(tmp_path, 'shared')
    assert plain > 1.7 * copy_mib, f'plain onnxruntime grew {plain:.0f} MiB'
    # one packed copy (the decode group's; packed is ~1.15x the file) where plain onnxruntime
    # holds two: the prefill group's file pages went back after its run
    assert shared < plain - 0.7 * copy_mib, \
        f'int8 groups grew {shared:.0f} MiB for {copy_mib:.0f} MiB of weight ({plain:.0f} plain)'
    for g, rows in ((0, 1), (1, 64)):
        x = np.random.default_rng(g).standard_normal((1, rows, HIDDEN)).astype(np.float32)
        want = x @ weight
        got = np.load(tmp_path / f'shared_out{g}.npy')
        # 8-bit weights: close, not equal (the packed decode group also quantizes its
        # activations, export/quantize.py; the unpacked prefill group multiplies in float)
        for out in (got, np.load(tmp_path / f'plain_out{g}.npy')):
            cosine = float((out * want).sum() / np.linalg.norm(out) / np.linalg.norm(want))
            assert cosine > 0.999, (g, cosine)


def test_vision_weights_leave_the_process_after_a_run(tmp_path):
    weight = _layer(tmp_path)
    copy_mib = weight.nbytes / MIB
    # the same one-group model as a 'layer' keeps its weights mapped (read every token) ...
    kept = _grown(tmp_path, 'one')
    assert kept > 0.8 * copy_mib, f'a layer model kept {kept:.0f} of {copy_mib:.0f} MiB'
    # ... as the vision tower (read once per image) it hands them back to the page cache
    vision = _grown(tmp_path, 'vision')
    assert vision < 0.3 * copy_mib, f'the vision model kept {vision:.0f} of {copy_mib:.0f} MiB'
    x = np.random.default_rng(1).standard_normal((1, 64, HIDDEN)).astype(np.float32)
    np.testing.assert_allclose(np.load(tmp_path / 'vision_out0.npy'), x @ weight, rtol=1e-4,
                               atol=1e-3)


ARENA_PROBE = r'''
import json, sys
import numpy as np
import onnx
import onnxruntime as ort
from qwen_vl_ros.vlm.runtime.onnx import OnnxSession

def rss_mib():
    with open('/proc/self/status') as f:
        return next(int(l.split()[1]) for l in f if l.startswith('VmRSS')) / 1024

folder, mode, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
x = np.random.default_rng(0).standard_normal((1, 1024, 2048)).astype(np.float32)
before = rss_mib()
sessions = []
for i in range(count):  # as the layers of a model: each opened, then run once in turn
    path = f'{folder}/m{i}.onnx'
    if mode == 'ours':
        sessions.append(OnnxSession({-1: path}, ['CPUExecutionProvider'], 1, role='layer'))
    else:
        sessions.append(ort.InferenceSession(path, providers=['CPUExecutionProvider']))
for s in sessions:
    out = s.run({'x': x}) if mode == 'ours' else s.run(None, {'x': x})
    assert np.allclose(out[0], (x * x + x).sum(-1), rtol=1e-4, atol=1e-2)
print(json.dumps({'grown_mib': rss_mib() - before}))
'''


def test_sessions_share_one_arena(tmp_path):
    # 12 models with 8 MiB intermediates (a prefill group's activations, scaled down): a
    # session's own arena keeps its peak after the run, so they add up; one shared arena
    # holds about one model's
    count = 12
    for i in range(count):
        x = helper.make_tensor_value_info('x', TensorProto.FLOAT, [1, 1024, 2048])
        y = helper.make_tensor_value_info('y', TensorProto.FLOAT, [1, 1024])
        nodes = [helper.make_node('Mul', ['x', 'x'], ['sq']),
                 helper.make_node('Add', ['sq', 'x'], ['sum']),
                 helper.make_node('ReduceSum', ['sum', 'axes'], ['y'], keepdims=0)]
        axes = numpy_helper.from_array(np.array([-1], np.int64), 'axes')
        graph = helper.make_graph(nodes, f'm{i}', [x], [y], [axes])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)]),
                  str(tmp_path / f'm{i}.onnx'))

    def grown(mode):
        out = subprocess.run([sys.executable, '-c', ARENA_PROBE, str(tmp_path), mode,
                              str(count)], check=True, capture_output=True, text=True,
                             timeout=120)
        return json.loads(out.stdout.strip().splitlines()[-1])['grown_mib']

    plain, ours = grown('plain'), grown('ours')
    activations = 2 * 8  # MiB: sq and sum of one model
    assert plain > count * activations, f'plain onnxruntime grew {plain:.0f} MiB'
    assert ours < plain / 3, f'one arena grew {ours:.0f} MiB ({plain:.0f} with one per session)'
