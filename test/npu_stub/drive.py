"""Test driver run inside scripts/with_npu_stub.sh's environment (a real pyaxengine release).

    python drive.py SPEC.json OUT.json

SPEC: {"action": "describe" | "keepalive" | "nan_rows" | "card_probe", "jobs": [JOB, ...]}
      (or one JOB's fields inline)
JOB:  {"model_dir": DIR, "cases": [{"frames": [[h, w, seed], ...], "prompt": str, "n": int,
                                    "second_per_grid_t": float}, ...],
       "in_buffer": [true, false], "env": {NAME: value} (set before loading, e.g.
       AX_STUB_CMM_FILL), "providers": null | [...], "providers_tuple": bool,
       "skip_row_flush": bool, "keeps_rows": bool (override InBufferKV.keeps_rows)}
OUT:  {"error": str | null, "jobs": [{"1": {"tokens": [[...], ...], "prompt_tokens": [...],
       "reused": [...], "vision_cached": [...], "kv": bool, "can_resume": bool,
       "flush_bytes": int, ... (board) | "link": {...} (card), "where": provider and card,
       "per_token": card link traffic in decode steps, "cache_bytes": one layer's K cache},
       "0": {...}}, ...], "runs": the last job's,
       "keepalive": str, "nan_rows": {"clean": [...], "poisoned": str, "after": [...]}}

Frames are random RGB images from numpy's default_rng(seed), as the tests make them.
"""

import gc
import json
import os
import sys

import numpy as np


def frame(h, w, seed):
    """Make the tests' random RGB frame."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def describe(spec, out):
    for job in spec.get('jobs', [spec]):
        out['runs'] = {}
        out['jobs'].append(out['runs'])
        _describe(job, out)


def _describe(spec, out):
    from qwen_vl_ros.vlm import GenerationOptions, Pipeline
    from qwen_vl_ros.vlm.runtime import axengine_kv

    import npu_host
    os.environ.update(spec.get('env', {}))  # libax_sys reads AX_STUB_* at each call
    if spec.get('skip_row_flush'):  # what a missing flush does to the answer
        axengine_kv.InBufferKV._flush_rows = lambda self, row, count: None
    if 'keeps_rows' in spec:  # a runtime that cannot keep its cache between requests
        axengine_kv.InBufferKV.keeps_rows = spec['keeps_rows']
    providers = spec.get('providers')
    if providers and spec.get('providers_tuple'):
        providers = tuple(providers)
    for in_buffer in spec.get('in_buffer', [True]):
        os.environ[axengine_kv.ENV_SWITCH] = '1' if in_buffer else '0'
        pipe = Pipeline.load(spec['model_dir'], backend='axengine', providers=providers,
                             threads=1, progress=lambda m: None)
        npu_host.STATS.reset()
        per_token = _link_per_token(pipe) if npu_host.on_card() else None
        tokens, prompts, reused, cached = [], [], [], []
        for case in spec['cases']:
            opts = GenerationOptions(max_new_tokens=case.get('n', 24), greedy=True,
                                     repetition_penalty=1.0,
                                     second_per_grid_t=case.get('second_per_grid_t', 1.0))
            frames = [frame(*f) for f in case['frames']]
            result = pipe.describe(frames, case['prompt'], opts)
            tokens.append(result.token_ids)
            prompts.append(result.prompt_tokens)
            reused.append(result.reused_prompt_tokens)
            cached.append(result.vision_cached)
        out['runs'][str(int(in_buffer))] = dict(tokens=tokens, prompt_tokens=prompts,
                                                reused=reused, vision_cached=cached,
                                                kv=pipe.decoder.kv is not None,
                                                can_resume=pipe.decoder.can_resume,
                                                where=pipe.runtime.where,
                                                cache_bytes=_cache_bytes(pipe.decoder),
                                                layers=len(pipe.decoder.layers),
                                                per_token=per_token,
                                                **npu_host.cache_stats())


def _cache_bytes(decoder):
    """Bytes of ONE layer's K (or V) cache as the decode group takes it."""
    return decoder.kv_len * decoder.kv_dim * decoder.cache_dtype.itemsize


def _link_per_token(pipe):
    """Count the card's link traffic inside decode steps: {steps, h2d/d2h bytes and calls}."""
    import npu_host
    acc = {'steps': 0, 'h2d_bytes': 0, 'h2d_calls': 0, 'd2h_bytes': 0, 'd2h_calls': 0}
    step = pipe.decoder.decode_step

    def counted(*args, **kwargs):
        before = npu_host.link_stats()
        try:
            return step(*args, **kwargs)
        finally:
            after = npu_host.link_stats()
            acc['steps'] += 1
            for key, way in (('h2d', 'host_to_device'), ('d2h', 'device_to_host')):
                for what in ('bytes', 'calls'):
                    acc[f'{key}_{what}'] += after[way][what] - before[way][what]

    pipe.decoder.decode_step = counted
    return acc


def keepalive(spec, out):
    """Check that a layer's in-buffer cache outlives the session object's last name."""
    from qwen_vl_ros.vlm.runtime.axengine import AxSession

    path = sorted(p for p in os.listdir(spec['model_dir']) if '_l0_' in p)[0]
    sess = AxSession(os.path.join(spec['model_dir'], path), None, None)
    decode = next(g for g in sess.groups
                  if int(np.prod(sess.input('indices', g).shape)) == 1)
    feed = {s.name: s.zeros() for s in sess.inputs(decode) if s.name in ('indices', 'input',
                                                                       'mask')}
    kv = sess.kv_cache(decode)
    want = kv.run(feed, decode)
    del sess
    gc.collect()
    got = kv.run(feed, decode)
    same = all(np.array_equal(a.view(np.uint8), b.view(np.uint8)) for a, b in zip(want, got))
    out['keepalive'] = 'same' if same else 'different'


def nan_rows(spec, out):
    """Leave NaN rows in the in-buffer cache (what a NaN run leaves), then describe twice.

    The first request fails by name and clears the rows on the device; the next is clean.
    """
    from qwen_vl_ros.vlm import GenerationOptions, Pipeline

    case = spec['cases'][0]
    opts = GenerationOptions(max_new_tokens=case.get('n', 8), greedy=True,
                             repetition_penalty=1.0)
    frames = [frame(*f) for f in case['frames']]
    pipe = Pipeline.load(spec['model_dir'], backend='axengine', threads=1,
                         progress=lambda m: None)
    assert pipe.decoder.kv is not None, 'no in-buffer KV cache'
    result = {'clean': pipe.describe(frames, case['prompt'], opts).token_ids}
    for kv in pipe.decoder.kv:
        if hasattr(kv, '_k'):  # the board: CMM rows the host writes, then flushes
            kv._k[...] = np.nan
            kv._v[...] = np.nan
            kv._flush_rows(0, kv.length)
        else:  # the card: NaN rows sent into its device buffers
            nan = np.full(kv.length * kv.width, np.nan, np.float32).astype(kv.dtype)
            kv._current()
            for at in (kv._k_at, kv._v_at):
                kv._copy(kv._in[at][0], kv._host(nan), nan.nbytes, 1)
    try:
        pipe.describe(frames, case['prompt'], opts)
        result['poisoned'] = 'no error'
    except Exception as e:  # noqa: BLE001 (the test checks the kind and message)
        result['poisoned'] = f'{type(e).__name__}: {e}'
    result['after'] = pipe.describe(frames, case['prompt'], opts).token_ids
    out['nan_rows'] = result


def card_probe(spec, out):
    """Check the card stub's memory rules through pyaxengine's own cffi handle of libaxcl_rt.

    Fresh device memory as AX_STUB_AXCL_FILL says, exact memcpy ranges and counters, a range
    past a block refused; with spec["touch"], a host write through a device pointer (the
    process must die, saying why on stderr).
    """
    import npu_host
    from axengine import _axclrt  # noqa: F401 (axclInit, as any session does)
    from axengine._axclrt_capi import axclrt_cffi as ffi, axclrt_lib as lib

    lst = ffi.new('axclrtDeviceList *')
    assert lib.axclrtGetDeviceList(lst) == 0
    assert lib.axclrtSetDevice(lst.devices[0]) == 0
    ptr = ffi.new('void **')
    assert lib.axclrtMalloc(ptr, 4096, lib.AXCL_MEM_MALLOC_NORMAL_ONLY) == 0
    dev = int(ffi.cast('uintptr_t', ptr[0]))
    fresh = np.zeros(4096, np.uint8)
    npu_host.STATS.reset()
    lib.axclrtMemcpy(ffi.cast('void *', fresh.ctypes.data), ptr[0], 4096,
                     lib.AXCL_MEMCPY_DEVICE_TO_HOST)
    host = np.arange(100, dtype=np.uint8)
    lib.axclrtMemcpy(ffi.cast('void *', dev + 1000), ffi.cast('void *', host.ctypes.data), 100,
                     lib.AXCL_MEMCPY_HOST_TO_DEVICE)
    back = np.zeros(4096, np.uint8)
    lib.axclrtMemcpy(ffi.cast('void *', back.ctypes.data), ptr[0], 4096,
                     lib.AXCL_MEMCPY_DEVICE_TO_HOST)
    past = lib.axclrtMemcpy(ffi.cast('void *', dev + 4000), ffi.cast('void *', host.ctypes.data),
                            100, lib.AXCL_MEMCPY_HOST_TO_DEVICE)
    out['card_probe'] = {
        'fresh_distinct': int(len(np.unique(fresh))), 'fresh_first': int(fresh[0]),
        'written_exactly': bool(np.array_equal(back[1000:1100], host)
                                and np.array_equal(back[:1000], fresh[:1000])
                                and np.array_equal(back[1100:], fresh[1100:])),
        'past_end_refused': past != 0, 'link': npu_host.link_stats()}
    if spec.get('touch'):
        with open(spec['out_early'], 'w') as f:
            json.dump(out, f)
        ffi.cast('unsigned char *', ptr[0])[10] = 1  # a host write to device memory
        out['card_probe']['touch'] = 'survived'


def main():
    from qwen_vl_ros.vlm.prompt import keep_torch_out
    keep_torch_out()  # as the CLI and the node: the tokenizer without torch
    spec = json.load(open(sys.argv[1]))
    out = {'error': None, 'runs': {}, 'jobs': []}
    try:
        {'describe': describe, 'keepalive': keepalive, 'nan_rows': nan_rows,
         'card_probe': card_probe}[spec.get('action', 'describe')](spec, out)
    except Exception as e:  # noqa: BLE001 (reported to the test, which decides)
        out['error'] = f'{type(e).__name__}: {e}'
    with open(sys.argv[2], 'w') as f:
        json.dump(out, f)


if __name__ == '__main__':
    main()
