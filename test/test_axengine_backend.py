"""The axengine backend on an emulation of pyaxengine (test/axengine_emulation) over stand-ins.

The emulated ``axengine`` keeps pyaxengine's session internals (``_io`` buffers, CMM memory
with separate CPU and device views, whole-buffer flushes in ``run``, bf16 I/O, exact shape and
dtype asserts), so the pipeline's in-buffer KV cache (runtime/axengine_kv.py) runs for real here:

- in-buffer KV and the plain ``run`` fallback give the same tokens, bit for bit (both bf16);
- both stay close to onnxruntime on the float32 stand-ins (teacher-forced logits);
- the older load_from_model / set_runtime_context API runs the same model (host cache) and gives
  the same tokens as the current API;
- cache maintenance matters: skipping the row flush changes the answer (the emulation would
  catch a missing flush), and the in-buffer path moves far fewer bytes.

The emulation is put on sys.path only inside these tests and removed afterwards: ``auto``
backend selection picks axengine whenever ``import axengine`` works.
"""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from qwen_vl_ros.vlm import GenerationOptions, Pipeline
from qwen_vl_ros.vlm.errors import RuntimeFailure
from qwen_vl_ros.vlm.runtime import axengine_kv

EMULATION = Path(__file__).resolve().parent / 'axengine_emulation'
CHUNKED = {'image_size': (112, 112), 'prefill_len': 16, 'histories': (16, 48, 80)}
PROMPT = 'Describe this image.'
GREEDY = GenerationOptions(max_new_tokens=24, greedy=True)


def frame(h, w, seed=0):
    """Make a random RGB frame."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _drop_axengine():
    for name in [n for n in sys.modules if n == 'axengine' or n.startswith('axengine.')]:
        del sys.modules[name]


@pytest.fixture
def emulated(monkeypatch):
    """Make ``import axengine`` give the emulation; ``emulated('legacy')`` for the older API."""
    monkeypatch.syspath_prepend(str(EMULATION))

    def use(api='current'):
        monkeypatch.setenv('AXENGINE_EMULATION_API', api)
        _drop_axengine()
        import axengine
        return axengine

    yield use
    _drop_axengine()


@pytest.fixture(scope='module')
def packed(tmp_path_factory):
    """Pack an ONNX stand-in directory into an emulated axmodel directory (once per dir)."""
    sys.path.insert(0, str(EMULATION))
    try:
        from axmodel_pack import pack_model_dir
    finally:
        sys.path.remove(str(EMULATION))
    cache = {}

    def pack(onnx_dir):
        if onnx_dir not in cache:
            cache[onnx_dir] = pack_model_dir(onnx_dir, tmp_path_factory.mktemp('axmodel'))
        return str(cache[onnx_dir])

    return pack


def load(model_dir, in_buffer=True, backend='axengine'):
    """Load a pipeline with the in-buffer KV cache on or off."""
    old = os.environ.get(axengine_kv.ENV_SWITCH)
    os.environ[axengine_kv.ENV_SWITCH] = '1' if in_buffer else '0'
    try:
        return Pipeline.load(model_dir, backend=backend, threads=1, progress=lambda m: None)
    finally:
        if old is None:
            os.environ.pop(axengine_kv.ENV_SWITCH)
        else:
            os.environ[axengine_kv.ENV_SWITCH] = old


def requests(size):
    """Several requests in a row: image, text only, another image, the first image again."""
    return [([frame(*size, seed=1)], PROMPT), ([], 'Say hello.'),
            ([frame(*size, seed=2)], 'What is in it?'), ([frame(*size, seed=1)], PROMPT)]


def run_all(pipe, size):
    return [pipe.describe(frames, prompt, GREEDY).token_ids for frames, prompt in requests(size)]


@pytest.mark.parametrize('variant', ['single', 'chunked'])
def test_in_buffer_kv_equals_plain_run(variant, export_variant, packed, emulated):
    axengine = emulated('current')
    options = CHUNKED if variant == 'chunked' else {}
    size = options.get('image_size', (448, 448))
    ax_dir = packed(export_variant(**options))
    fast, plain = load(ax_dir, in_buffer=True), load(ax_dir, in_buffer=False)
    assert fast.decoder.kv is not None and plain.decoder.kv is None
    assert not fast.decoder.k_cache  # no host cache when the cache lives in the buffers

    stats = axengine.EMULATION_STATS
    stats.reset()
    fast_tokens = run_all(fast, size)
    fast_bytes = stats.flush_bytes + stats.invalidate_bytes
    stats.reset()
    plain_tokens = run_all(plain, size)
    plain_bytes = stats.flush_bytes + stats.invalidate_bytes

    assert fast_tokens == plain_tokens
    assert fast_tokens[0] == fast_tokens[3]  # a stale cache from earlier requests never leaks
    assert fast_bytes * 5 < plain_bytes


def test_both_paths_close_to_onnxruntime(tiny_onnx_dir, packed, emulated):
    emulated('current')
    ax_dir = packed(tiny_onnx_dir)
    ref = load(str(tiny_onnx_dir), backend='onnxruntime')
    img = [frame(448, 448, seed=3)]
    tokens = ref.describe(img, PROMPT, GREEDY).token_ids
    want = ref.score(img, PROMPT, tokens)
    for in_buffer in (True, False):
        got = load(ax_dir, in_buffer=in_buffer).score(img, PROMPT, tokens)
        # bf16 activations and caches against float32: close, and the same choices
        assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.9999
        assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
        assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9


def test_kv_length_edge_in_buffer(export_variant, packed, emulated):
    emulated('current')
    ax_dir = packed(export_variant(image_size=(112, 112), prefill_len=48, kv_len=56))
    opts = GenerationOptions(max_new_tokens=100, greedy=True)
    fast = load(ax_dir).describe([], 'hi', opts)
    plain = load(ax_dir, in_buffer=False).describe([], 'hi', opts)
    assert fast.token_ids == plain.token_ids
    assert fast.prompt_tokens + len(fast.token_ids) == 56 + 1  # the last cache row was used


def test_legacy_api_runs_with_host_cache_and_same_tokens(tiny_onnx_dir, packed, emulated):
    ax_dir = packed(tiny_onnx_dir)
    emulated('current')
    current = run_all(load(ax_dir, in_buffer=True), (448, 448))
    axengine = emulated('legacy')
    assert hasattr(axengine.InferenceSession, 'load_from_model')
    legacy = load(ax_dir)
    assert type(legacy.decoder.layers[0]).__name__ == 'LegacyAxSession'
    assert legacy.decoder.kv is None  # its buffers are compiled code: plain run, whole caches
    assert run_all(legacy, (448, 448)) == current


def test_missing_flush_is_caught_by_the_emulation(tiny_onnx_dir, packed, emulated, monkeypatch):
    emulated('current')
    ax_dir = packed(tiny_onnx_dir)
    img = [frame(448, 448, seed=1)]
    good = load(ax_dir).describe(img, PROMPT, GREEDY).token_ids
    # Rows written but never flushed: the emulated NPU keeps reading zeros for the cache.
    monkeypatch.setattr(axengine_kv.InBufferKV, '_flush_rows', lambda self, row, count: None)
    assert load(ax_dir).describe(img, PROMPT, GREEDY).token_ids != good


def test_fallbacks_and_checks(tiny_onnx_dir, packed, emulated, monkeypatch):
    emulated('current')
    ax_dir = packed(tiny_onnx_dir)
    assert load(str(tiny_onnx_dir), backend='onnxruntime').decoder.kv is None

    class NoInternals:  # e.g. the M.2 card's AXCLRT session: no _io of CMM buffers
        def get_inputs(self, shape_group=0):
            return []

    assert axengine_kv.InBufferKV.attach(NoInternals(), 0) is None

    pipe = load(ax_dir)
    kv = pipe.decoder.kv[0]
    spec = {s.name: s for s in pipe.decoder.layers[0].inputs(pipe.decoder.decode_group)}
    feed = {name: spec[name].zeros() for name in ('indices', 'input', 'mask')}
    outs = kv.run(feed, pipe.decoder.decode_group)
    assert [o.shape for o in outs] == [s.shape for s in
                                       pipe.decoder.layers[0].outputs(pipe.decoder.decode_group)]
    with pytest.raises(RuntimeFailure, match='must be'):
        kv.run(dict(feed, mask=feed['mask'].astype(np.float32)), pipe.decoder.decode_group)
    prefill = pipe.decoder.prefill_groups[0].group  # the first chunk's dummy cache must be fed
    pspec = {s.name: s for s in pipe.decoder.layers[0].inputs(prefill)}
    with pytest.raises(RuntimeFailure, match='needs inputs'):
        kv.run({n: pspec[n].zeros() for n in ('indices', 'input', 'mask')}, prefill)
