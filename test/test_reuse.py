"""Follow-up questions about the same frame reuse its work, token-identical to a fresh run.

Every runtime call is counted (a spy around each real session's ``run``, and around the
in-buffer KV cache's ``step``), so the tests show what was skipped: no vision call for a frame
already seen, and on a chunked-prefill build only the chunks after the common prompt prefix.
The reference for every answer is a fresh run on the same pipeline with both caches emptied.
"""

import collections
import math
import sys

import numpy as np
import pytest

pytest.importorskip('torch', reason='the tiny stand-ins are exported with torch')

from qwen_vl_ros.vlm import GenerationOptions, Pipeline, RuntimeFailure  # noqa: E402
from qwen_vl_ros.vlm.reuse import VisionCache, common_prefix, CachedPrompt  # noqa: E402
# AXERA's pyaxengine over the stub NPU: its driver, and its packing fixture as `stub_packed`
from test_axengine_backend import CURRENT, drive  # noqa: E402
from test_axengine_backend import packed as stub_packed  # noqa: E402,F401 (a fixture)

# the chunked build of test_axengine_backend.py (exported once): chunks of 16, prompts up to 96
CHUNKED = {'image_size': (112, 112), 'prefill_len': 16, 'histories': (16, 48, 80)}
PROMPT = 'Describe this image.'
FOLLOW = 'What colour is the biggest thing?'
GREEDY = GenerationOptions(max_new_tokens=12, greedy=True, repetition_penalty=1.0)


def frame(h, w, seed=0):
    """Make a random RGB frame."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


class Calls:
    """Count every runtime call of a pipeline by (model role, shape group)."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.counts = collections.Counter()
        dec = pipe.decoder
        targets = [('vision', pipe.vision, 'run'), ('post', dec.post, 'run')]
        targets += [('layer', layer, 'run') for layer in dec.layers]
        targets += [('layer', kv, 'step') for kv in (dec.kv or [])]
        for role, obj, method in targets:
            real = getattr(obj, method)

            def spy(feed, group=0, *args, _real=real, _role=role):
                self.counts[(_role, group)] += 1
                return _real(feed, group, *args)
            setattr(obj, method, spy)

    def take(self) -> collections.Counter:
        """Return the counts since the last take and start again."""
        out, self.counts = self.counts, collections.Counter()
        return out

    def prefill_steps(self, counts) -> int:
        """Layer calls of prefill groups (every layer step before the first token)."""
        dec = self.pipe.decoder
        return sum(n for (role, g), n in counts.items()
                   if role == 'layer' and g != dec.decode_group)


def fresh(pipe, frames, prompt, **kw):
    """Answer with nothing reused: both caches emptied first."""
    pipe.vision_cache.clear()
    pipe.prefix_cache.forget()
    return pipe.describe(frames, prompt, GREEDY, **kw)


def chunks(n, c):
    return math.ceil(n / c)


@pytest.fixture(scope='module')
def chunked(export_variant):
    return Pipeline.load(str(export_variant(**CHUNKED)), threads=1, progress=lambda m: None)


@pytest.fixture(scope='module')
def single(tiny_onnx_dir):
    return Pipeline.load(str(tiny_onnx_dir), threads=1, progress=lambda m: None)


def first_pad(pipe, prompt, n_frames):
    """Index of the first vision pad token of the prompt (ids from the prompt builder)."""
    ids, _ = pipe.prompts.build(prompt, pipe.system_prompt, pipe._blocks_for(n_frames))
    cfg = pipe.files.config
    return int(np.flatnonzero(np.isin(ids, [cfg.image_token_id, cfg.video_token_id]))[0])


def vision_end(pipe, prompt, n_frames):
    ids, _ = pipe.prompts.build(prompt, pipe.system_prompt, pipe._blocks_for(n_frames))
    return int(np.flatnonzero(ids == pipe.files.config.vision_end_token_id)[-1])


@pytest.mark.parametrize('kind', ['image', 'video', 'text'])
def test_follow_up_on_chunked_build_skips_vision_and_prefix(chunked, kind):
    pipe = chunked
    frames = {'image': [frame(112, 112, seed=3)], 'text': [],
              'video': [frame(112, 112, seed=20 + i) for i in range(4)]}[kind]
    prompt, follow = (PROMPT, FOLLOW) if frames else ('What is a robot?', 'And a drone?')
    want = fresh(pipe, frames, follow)
    calls = Calls(pipe)
    first = fresh(pipe, frames, prompt)
    c_first = calls.take()
    got = pipe.describe(frames, follow, GREEDY)
    c_follow = calls.take()

    assert got.token_ids == want.token_ids and got.text == want.text
    c, layers = pipe.decoder.chunk, len(pipe.decoder.layers)
    t_first, t = first.prompt_tokens, got.prompt_tokens
    p = got.reused_prompt_tokens
    # the fresh question prefills every chunk, the follow-up only what follows the prefix
    assert calls.prefill_steps(c_first) == layers * chunks(t_first, c)
    assert calls.prefill_steps(c_follow) == layers * chunks(t - p, c)
    assert calls.prefill_steps(c_follow) < calls.prefill_steps(c_first)
    if frames:
        groups = math.ceil(len(frames) / 2)   # one vision call per temporal pair of frames
        assert c_first[('vision', 0)] == groups
        assert c_follow[('vision', 0)] == 0 and got.vision_cached and not first.vision_cached
        # every vision row is reused (the prefix runs through the last pad)
        assert p >= vision_end(pipe, follow, len(frames))
    else:
        assert p > 0
    # teacher-forced logits of the reused run equal a fresh run's
    reused = pipe.score(frames, follow, want.token_ids)
    pipe.vision_cache.clear()
    pipe.prefix_cache.forget()
    np.testing.assert_allclose(reused, pipe.score(frames, follow, want.token_ids), atol=1e-5)


def test_single_prefill_build_reuses_vision_only(single):
    pipe = single
    img = [frame(448, 448, seed=4)]
    want = fresh(pipe, img, FOLLOW)
    calls = Calls(pipe)
    fresh(pipe, img, PROMPT)
    c_first = calls.take()
    got = pipe.describe(img, FOLLOW, GREEDY)
    c_follow = calls.take()
    assert got.token_ids == want.token_ids
    assert not pipe.decoder.can_resume and not pipe.prefix_cache.enabled
    assert c_first[('vision', 0)] == 1 and c_follow[('vision', 0)] == 0
    layers = len(pipe.decoder.layers)
    assert calls.prefill_steps(c_first) == calls.prefill_steps(c_follow) == layers
    assert got.reused_prompt_tokens == 0 and got.vision_cached


def test_invalidation_frame_system_prompt_resize_and_eviction(chunked):
    pipe = chunked
    calls = Calls(pipe)
    a, b, c = (frame(112, 112, seed=s) for s in (5, 6, 7))

    def ask(frames, prompt=FOLLOW, **kw):
        """Answer with reuse and check it against a fresh run; return (result, calls)."""
        state = (pipe.vision_cache._entries.copy(), pipe.prefix_cache.cached)
        want = fresh(pipe, frames, prompt, **kw)
        pipe.vision_cache._entries, pipe.prefix_cache.cached = state
        calls.take()
        got = pipe.describe(frames, prompt, GREEDY, **kw)
        assert got.token_ids == want.token_ids
        return got, calls.take()

    fresh(pipe, [a], PROMPT)
    # another frame: vision runs again, the prefix ends before its first vision pad
    got, n = ask([b])
    assert n[('vision', 0)] == 1 and not got.vision_cached
    assert 0 < got.reused_prompt_tokens <= first_pad(pipe, FOLLOW, 1)
    # the same frame again: nothing but the question is prefilled
    got, n = ask([b], PROMPT)
    assert n[('vision', 0)] == 0 and got.reused_prompt_tokens > first_pad(pipe, PROMPT, 1)
    # another system prompt: the vision features still hold, the prompt prefix does not
    try:
        pipe.system_prompt = 'You are a careful robot.'
        got, n = ask([b])
        assert n[('vision', 0)] == 0 and got.vision_cached
        assert got.reused_prompt_tokens < first_pad(pipe, FOLLOW, 1) - 4
    finally:
        pipe.system_prompt = ''
    # another resize mode: other patches, so other features
    wide = frame(112, 160, seed=8)
    fresh(pipe, [wide], PROMPT)
    try:
        pipe.resize = 'letterbox'
        got, n = ask([wide])
        assert n[('vision', 0)] == 1 and not got.vision_cached
        assert got.reused_prompt_tokens <= first_pad(pipe, FOLLOW, 1)
    finally:
        pipe.resize = 'stretch'
    # vision_cache_frames = 2: the oldest of three frames is dropped, the others stay
    pipe.vision_cache.clear()
    for f in (a, b, c):
        ask([f])
    assert ask([b])[1][('vision', 0)] == 0
    assert ask([a])[1][('vision', 0)] == 1       # a was the oldest: evicted by c
    assert ask([b])[1][('vision', 0)] == 0


def test_frame_keys_name_the_frames(chunked):
    pipe = chunked
    calls = Calls(pipe)
    a, b = frame(112, 112, seed=9), frame(112, 112, seed=10)
    fresh(pipe, [a], PROMPT, frame_keys=[('/cam/image', 100, 'cam')])
    calls.take()
    got = pipe.describe([a], FOLLOW, GREEDY, frame_keys=[('/cam/image', 100, 'cam')])
    assert calls.take()[('vision', 0)] == 0 and got.vision_cached
    # another stamp is another frame, whatever its bytes
    got = pipe.describe([a], FOLLOW, GREEDY, frame_keys=[('/cam/image', 101, 'cam')])
    assert calls.take()[('vision', 0)] == 1 and not got.vision_cached
    # without keys the patch bytes name the frame
    pipe.describe([b], FOLLOW, GREEDY)
    assert calls.take()[('vision', 0)] == 1
    pipe.describe([b], PROMPT, GREEDY)
    assert calls.take()[('vision', 0)] == 0
    with pytest.raises(ValueError, match='2 frame keys for 1 frames'):
        pipe.describe([a], FOLLOW, GREEDY, frame_keys=[1, 2])


def test_failed_prefill_leaves_nothing_to_reuse(chunked):
    pipe = chunked
    img = [frame(112, 112, seed=11)]
    want = fresh(pipe, img, FOLLOW)
    fresh(pipe, img, PROMPT)
    layer = pipe.decoder.layers[-1]
    real = layer.run

    def broken(feed, group=0):
        raise RuntimeFailure('the NPU run failed (injected)')
    layer.run = broken
    try:
        with pytest.raises(RuntimeFailure):
            pipe.describe(img, FOLLOW, GREEDY)
    finally:
        layer.run = real
    assert pipe.prefix_cache.cached is None
    got = pipe.describe(img, FOLLOW, GREEDY)
    assert got.reused_prompt_tokens == 0 and got.token_ids == want.token_ids


def test_chunk_schedule_falls_back_to_boundaries(chunked):
    dec = chunked.decoder          # chunk 16, histories up to 80: prompts up to 96
    assert dec.chunk_starts(70, 0) == [0, 16, 32, 48, 64]
    assert dec.chunk_starts(70, 10) == [10, 26, 42, 58]   # last start 58: history group 80
    # a last start past the largest history (86, 85 > 80): the chunk boundaries instead
    assert dec.chunk_starts(90, 70) == [64, 80]
    assert dec.chunk_starts(96, 5) == [0, 16, 32, 48, 64, 80]


def test_vision_cache_and_common_prefix_rules():
    cache = VisionCache(2)
    for k in 'abc':
        cache.put(k, np.zeros(1))
    assert cache.get('a') is None and cache.get('b') is not None and len(cache) == 2
    cache.put('d', np.zeros(1))            # b was used last: c goes
    assert cache.get('c') is None and cache.get('b') is not None
    assert len(VisionCache(0).put('x', np.zeros(1)) or VisionCache(0)) == 0
    ids = np.array([1, 2, 9, 9, 3, 4])
    pos = np.stack([np.arange(6)] * 3)
    held = CachedPrompt(ids, pos, 'frame1')
    assert common_prefix(held, ids, pos, 'frame1', [9]) == 6
    assert common_prefix(held, ids, pos, 'frame2', [9]) == 2     # other vision: stop at pads
    moved = pos.copy()
    moved[0, 3] = 7                                              # one rope row differs
    assert common_prefix(held, ids, moved, 'frame1', [9]) == 3
    assert common_prefix(None, ids, pos, 'frame1', [9]) == 0


@pytest.mark.parametrize('keeps_rows', [True, False])
def test_in_buffer_cache_resumes_or_falls_back(chunked, export_variant, tmp_path, keeps_rows,
                                               stub_packed):  # noqa: F811 (the fixture)
    """AXERA's pyaxengine over the stub NPU: the in-buffer KV cache keeps its rows, or not.

    Where a runtime says it cannot keep them, the follow-up runs the whole prefill (vision
    still reused); the tokens are a fresh onnxruntime run's either way.
    """
    img = [112, 112, 12]
    cases = [{'frames': [img], 'prompt': PROMPT, 'n': 12},
             {'frames': [img], 'prompt': FOLLOW, 'n': 12}]
    out = drive(CURRENT, {'model_dir': stub_packed(export_variant(**CHUNKED)), 'cases': cases,
                          'in_buffer': [True, False], 'keeps_rows': keeps_rows}, tmp_path)
    assert out['error'] is None, (out['error'], out['stderr'][-2000:])
    want = fresh(chunked, [frame(*img[:2], seed=img[2])], FOLLOW).token_ids
    first = fresh(chunked, [frame(*img[:2], seed=img[2])], PROMPT).token_ids
    for path, run in out['runs'].items():     # '1': in-buffer KV, '0': host arrays
        assert run['kv'] == (path == '1')
        assert run['tokens'] == [first, want], path
        assert run['vision_cached'] == [False, True], path
        resumes = keeps_rows or path == '0'
        assert run['can_resume'] == resumes, path
        assert (run['reused'][1] > 0) == resumes and run['reused'][0] == 0, path


def test_cancel_runs_no_model_after_should_stop(single):
    """should_stop is asked before every decode step: once it says stop, nothing else runs."""
    pipe = single
    calls = Calls(pipe)
    seen, tokens = [], []

    def stop():
        seen.append(sum(calls.counts.values()))
        return len(tokens) >= 4

    r = pipe.describe([frame(448, 448, seed=13)], PROMPT,
                      GenerationOptions(max_new_tokens=50, greedy=True), should_stop=stop,
                      on_token=tokens.append)
    assert r.finish_reason == 'cancelled' and len(r.token_ids) == 4
    assert sum(calls.counts.values()) == seen[-1]   # no runtime call after the stop


def test_cli_follow_up_questions_reuse_the_frame(chunked, export_variant, tmp_path):
    import json
    import subprocess

    import cv2
    img = frame(112, 112, seed=14)
    path = tmp_path / 'f.png'
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    out = subprocess.run(
        [sys.executable, '-m', 'qwen_vl_ros.cli.describe', '--model-dir',
         str(export_variant(**CHUNKED)), '--image', str(path), '--max-new-tokens', '6',
         '--greedy', '--repetition-penalty', '1.0', '--json', '--follow-up', FOLLOW],
        capture_output=True, text=True, timeout=120, check=True)
    first, follow = (json.loads(line) for line in out.stdout.splitlines())
    assert (first['prompt'], follow['prompt']) == (PROMPT, FOLLOW)
    assert not first['vision_cached'] and first['reused_prompt_tokens'] == 0
    assert follow['vision_cached'] and follow['reused_prompt_tokens'] > 0
    opts = GenerationOptions(max_new_tokens=6, greedy=True, repetition_penalty=1.0)
    chunked.vision_cache.clear()
    chunked.prefix_cache.forget()
    assert follow['token_ids'] == chunked.describe([img], FOLLOW, opts).token_ids


def test_nan_outputs_leave_nothing_to_reuse(export_variant):
    """NaN logits mid-answer wipe the KV cache; NaN vision features fail at the first token.

    Either way the next question about the frame runs from scratch (test/fault_runtime.py
    injects the faults into the real onnxruntime sessions), with a fresh run's tokens.
    """
    from fault_runtime import Fault, FaultPlan, wrap_pipeline
    from qwen_vl_ros.vlm.errors import NonFiniteOutput
    pipe = Pipeline.load(str(export_variant(**CHUNKED)), threads=1, progress=lambda m: None)
    plan = FaultPlan()
    wrap_pipeline(pipe, plan)
    img = [frame(112, 112, seed=15)]
    want = fresh(pipe, img, FOLLOW)
    fresh(pipe, img, PROMPT)
    plan.arm(Fault('nan', role='post', step=2))
    with pytest.raises(NonFiniteOutput):
        pipe.describe(img, FOLLOW, GREEDY)
    got = pipe.describe(img, FOLLOW, GREEDY)
    assert got.reused_prompt_tokens == 0 and got.token_ids == want.token_ids
    assert got.vision_cached          # the features were not the problem
    other = [frame(112, 112, seed=16)]
    plan.arm(Fault('nan', role='vision'))
    with pytest.raises(NonFiniteOutput):
        pipe.describe(other, PROMPT, GREEDY)
    got = pipe.describe(other, PROMPT, GREEDY)
    assert not got.vision_cached and got.reused_prompt_tokens == 0
    assert got.token_ids == fresh(pipe, other, PROMPT).token_ids
    assert len(plan.fired) == 2
