"""Bench 1: host cost per decode token at the real shapes, pipeline vs the demo's naive loop.

    python bench/decode_host.py --onnx-dir REAL/onnx --ax-dir REAL/axmodel [--tokens 48]

Models: bench/standins.py (36 layers, hidden 2048, kv 256 x 1023, vocab 151936, prefill 320),
graphs that only move data. One image + prompt (281 tokens, as AXERA's demo), then N decode
steps, timed per token:

(a) onnxruntime: the pipeline (Pipeline.describe) vs a naive loop written the way AXERA's
    python/infer.py decodes (whole host caches in every feed, its post_process sampling).
    onnxruntime reads numpy inputs in place, so both are cheap; reported: wall time per token
    (an upper bound of the host cost: the graphs compute nothing) and the part outside run().
(b) AXERA's pyaxengine 0.1.3.rc3 (../shared/pyaxengine, unmodified: persistent CMM input
    buffers, every fed input memmoved in and its whole buffer flushed per run, outputs
    invalidated and copied out, bf16) over the stub NPU libraries of test/npu_stub (the script
    re-executes itself in that environment): the pipeline with its in-buffer KV cache, the
    pipeline on plain run() (the fallback), and the naive loop on the same API. Host cost per
    token = wall time minus the time inside the stub NPU's run (AX_ENGINE_RunGroupIOSync), so
    what remains is what the Python side does on the board: pyaxengine's own Python, cffi,
    feeds, copies, cache maintenance (memcpy in the stub), sampling, text.

Targets: pipeline <= 2 ms per token in (a) and (b); in (b) at most 1/5 of the naive loop.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import cv2
import ml_dtypes
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    bench_parser, demo_image_bgr, machine, machine_line, median, run_under_npu_stub, verdict,
    write_result)

from qwen_vl_ros.vlm import GenerationOptions, Pipeline  # noqa: E402

PROMPT = 'Describe this image.'
PYAX_RELEASE = 'pyaxengine-0.1.3.rc3 (AXERA, unmodified) over test/npu_stub'
BF16 = np.dtype(ml_dtypes.bfloat16)


class Clock:
    """Time spent inside the runtime's model calls (the 'NPU'): wall and this thread's CPU."""

    def __init__(self):
        self.wall = 0.0
        self.cpu = 0.0


class TimedOrt:
    """Wrap an onnxruntime session: time every run() into a Clock."""

    def __init__(self, sess, clock: Clock):
        self._sess, self._clock = sess, clock

    def run(self, *args, **kwargs):
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return self._sess.run(*args, **kwargs)
        finally:
            self._clock.wall += time.perf_counter() - t0
            self._clock.cpu += time.thread_time() - c0

    def __getattr__(self, name):
        return getattr(self._sess, name)


def time_ort_sessions(pipe: Pipeline, clock: Clock) -> None:
    """Route every onnxruntime session of a pipeline through TimedOrt."""
    for sess in [pipe.vision, pipe.decoder.post, *pipe.decoder.layers]:
        sess._sessions = {g: (TimedOrt(s, clock), i, o) for g, (s, i, o) in
                          sess._sessions.items()}


def counters(device) -> dict:
    """Now: wall and thread-CPU clocks, time inside the runtime, bytes flushed.

    On the card: the bytes moved over its link and, when ``device`` gives them, the calls.
    """
    dev_wall, dev_cpu, flushed, *calls = device()
    return {'wall': time.perf_counter(), 'cpu': time.thread_time(), 'dev_wall': dev_wall,
            'dev_cpu': dev_cpu, 'flush': flushed, 'calls': calls[0] if calls else 0}


def per_token(c0: dict, c1: dict, steps: int) -> dict:
    """Per-token figures between two counters() snapshots.

    host = time outside the runtime's model calls. ``host_cpu_ms`` counts this thread's CPU
    time (what the host side costs, not inflated when other processes share the cores);
    ``host_ms`` is the same from wall clocks.
    """
    d = {k: c1[k] - c0[k] for k in c0}
    return {'wall_ms': 1e3 * d['wall'] / steps, 'device_ms': 1e3 * d['dev_wall'] / steps,
            'host_ms': 1e3 * (d['wall'] - d['dev_wall']) / steps,
            'host_cpu_ms': 1e3 * (d['cpu'] - d['dev_cpu']) / steps,
            'flush_mb_per_token': d['flush'] / 2**20 / steps,
            'calls_per_token': d['calls'] / steps}


def summary(rows: list) -> dict:
    """Median of each figure over the runs, plus the per-run host CPU times."""
    out = {k: median([r[k] for r in rows]) for k in rows[0]}
    out['host_cpu_ms_runs'] = [round(r['host_cpu_ms'], 4) for r in rows]
    return out


def image() -> np.ndarray:
    """Return the demo's image as RGB."""
    return cv2.cvtColor(demo_image_bgr(), cv2.COLOR_BGR2RGB)


def pipeline_per_token(pipe: Pipeline, device, tokens: int, runs: int) -> dict:
    """Per-token figures of Pipeline.describe's decode loop (median over runs)."""
    dec = pipe.decoder
    marks = {}
    start_decode = dec.start_decode

    def mark(prompt_len):
        marks['c0'] = counters(device)
        start_decode(prompt_len)

    dec.start_decode = mark
    opts = GenerationOptions(max_new_tokens=tokens + 1)
    img = [image()]
    pipe.describe(img, PROMPT, GenerationOptions(max_new_tokens=4))  # warm-up
    rows = []
    for _ in range(runs):
        r = pipe.describe(img, PROMPT, opts)
        c1 = counters(device)
        steps = len(r.token_ids) - 1
        assert steps == tokens, (steps, r.finish_reason)
        rows.append(per_token(marks['c0'], c1, steps))
    dec.start_decode = start_decode
    return dict(summary(rows), prompt_tokens=r.prompt_tokens)


# -- the naive loop, as AXERA's python/infer.py writes it ---------------------------------------
def demo_post_process(data, topk=1, topp=0.001, temperature=0.1):
    """Sample as the demo does: top-k candidates, temperature, softmax, top-p, multinomial."""
    def top_p(probs, p):
        res = probs.copy()
        total = 0
        for i in np.argsort(probs)[::-1]:
            if total >= p:
                res[i] = 0
            total += res[i]
        return res / total

    r = data.astype(np.float32).flatten()
    cand = np.argpartition(r, -topk)[-topk:]
    value = r[cand] / temperature
    soft = np.exp(value - value.max())
    soft = (soft / soft.sum()).astype(np.float64)
    soft = top_p(soft, topp)
    soft = soft / soft.sum()
    return cand[np.random.multinomial(1, soft).argmax()]


class NaiveLoop:
    """Prefill once, then decode the way the demo does: whole caches fed to every layer."""

    def __init__(self, run_layer, run_post, table, cache_dtype, layers, hidden, kv_dim,
                 kv_len=1023, prefill=320):
        self.run_layer, self.run_post, self.table = run_layer, run_post, table
        self.dtype = cache_dtype
        self.layers, self.hidden, self.kv_len, self.prefill = layers, hidden, kv_len, prefill
        self.k = [np.zeros((1, kv_len, kv_dim), cache_dtype) for _ in range(layers)]
        self.v = [np.zeros((1, kv_len, kv_dim), cache_dtype) for _ in range(layers)]

    def prefill_prompt(self, ids):
        n, p = len(ids), self.prefill
        data = np.zeros((1, p, self.hidden), self.dtype)
        data[0, :n] = self.table[ids].astype(self.dtype)
        indices = np.zeros((3, p), np.uint32)
        indices[:, :n] = np.arange(n)
        mask = np.full((1, p, p), -65536.0, np.float32)
        for i in range(n):
            mask[:, i, :i + 1] = 0
        mask = mask.astype(self.dtype)
        dummy = np.zeros((1, 1, self.hidden), self.dtype)
        for i in range(self.layers):
            out = self.run_layer(i, {'K_cache': dummy, 'V_cache': dummy, 'indices': indices,
                                     'input': data, 'mask': mask}, 1)
            self.k[i][:, :n] = out[0][:, :n]
            self.v[i][:, :n] = out[1][:, :n]
            data = out[2]
        return demo_post_process(self.run_post(data[:, n - 1:n]))

    def decode(self, token, n_prompt, steps):
        mask = np.zeros((1, 1, self.kv_len + 1), np.float32).astype(self.dtype)
        mask[:, :, :self.kv_len] -= 65536
        mask[:, :, :n_prompt] = 0
        position = n_prompt
        for slot in range(n_prompt, n_prompt + steps):
            indices = np.array([position], np.uint32).reshape((1, 1))
            position += 1
            data = self.table[token, :].reshape((1, 1, self.hidden)).astype(self.dtype)
            for i in range(self.layers):
                out = self.run_layer(i, {'K_cache': self.k[i], 'V_cache': self.v[i],
                                         'indices': indices, 'input': data, 'mask': mask}, 0)
                self.k[i][:, slot, :] = out[0][:, :, :]
                self.v[i][:, slot, :] = out[1][:, :, :]
                data = out[2]
            mask[..., slot] = 0
            token = demo_post_process(self.run_post(data))
        return token


def naive_per_token(loop: NaiveLoop, device, tokens: int, runs: int) -> dict:
    """Per-token figures of the naive loop (median over runs)."""
    ids = list(np.random.default_rng(0).integers(0, 2048, 281))
    loop.decode(loop.prefill_prompt(ids), len(ids), 2)  # warm-up
    rows = []
    for _ in range(runs):
        token = loop.prefill_prompt(ids)
        c0 = counters(device)
        loop.decode(token, len(ids), tokens)
        rows.append(per_token(c0, counters(device), tokens))
    return summary(rows)


def onnxruntime_part(onnx_dir: Path, tokens: int, runs: int) -> dict:
    """Measure (a): pipeline and naive loop on onnxruntime."""
    import onnxruntime as ort
    clock = Clock()
    pipe = Pipeline.load(str(onnx_dir), backend='onnxruntime', threads=1,
                         progress=lambda m: None)
    time_ort_sessions(pipe, clock)

    def device():
        return clock.wall, clock.cpu, 0

    out = {'pipeline': pipeline_per_token(pipe, device, tokens, runs)}
    cfg, files = pipe.files.config, pipe.files
    del pipe

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3

    def session(path):
        return TimedOrt(ort.InferenceSession(path, sess_options=opts,
                                             providers=['CPUExecutionProvider']), clock)

    layers = [{g: session(p) for g, p in paths.items()} for paths in files.layers]
    post = session(files.post)
    table = np.load(files.embeddings, mmap_mode='r')  # the demo loads it whole: see bench 3
    loop = NaiveLoop(lambda i, feed, g: layers[i][g].run(None, feed),
                     lambda x: post.run(None, {'input': x})[0], table, np.float32,
                     cfg.num_layers, cfg.hidden_size, cfg.kv_dim)
    out['naive'] = naive_per_token(loop, device, tokens, runs)
    return out


def pyaxengine_part(ax_dir: Path, tokens: int, runs: int, device=None) -> dict:
    """Measure (b): pipeline (in-buffer KV, plain run) and naive loop on pyaxengine + stub NPU.

    ``device()`` gives (time in the NPU, its CPU time, bytes moved[, calls]); default: the
    board's bytes flushed. Bench 1c (decode_card.py) gives the card's link counters.
    """
    import npu_host  # the stub NPU's Python side, registered at start (sitecustomize)

    from qwen_vl_ros.vlm.runtime.axengine import import_axengine, prints_to_log
    axengine = import_axengine()
    stats = npu_host.STATS

    def flushed():
        return stats.npu_s, stats.npu_cpu_s, npu_host.cache_stats()['flush_bytes']

    device = device or flushed

    out = {}
    for name, switch in (('pipeline', '1'), ('pipeline_plain_run', '0')):
        os.environ['QWEN_VL_KV_IN_BUFFER'] = switch
        pipe = Pipeline.load(str(ax_dir), backend='axengine', progress=lambda m: None)
        assert (pipe.decoder.kv is not None) == (switch == '1')
        out[name] = pipeline_per_token(pipe, device, tokens, runs)
        cfg, files = pipe.files.config, pipe.files
        del pipe
    os.environ.pop('QWEN_VL_KV_IN_BUFFER')

    with prints_to_log():
        layers = [axengine.InferenceSession(paths[-1]) for paths in files.layers]
        post = axengine.InferenceSession(files.post)
    table = np.load(files.embeddings, mmap_mode='r')
    loop = NaiveLoop(lambda i, feed, g: layers[i].run(None, feed, shape_group=g),
                     lambda x: post.run(None, {'input': x})[0], table, BF16,
                     cfg.num_layers, cfg.hidden_size, cfg.kv_dim)
    out['naive'] = naive_per_token(loop, device, tokens, runs)
    return out


def main(argv=None) -> int:
    """Run both parts, print the figures, write the JSON result."""
    p = bench_parser(__doc__, stand_in_dirs=True)
    p.add_argument('--tokens', type=int, default=48)
    args = p.parse_args(argv)
    run_under_npu_stub()

    a = onnxruntime_part(args.onnx_dir, args.tokens, args.runs)
    b = pyaxengine_part(args.ax_dir, args.tokens, args.runs)
    ratio_a = a['pipeline']['wall_ms'] / a['naive']['wall_ms']
    ratio_b = b['pipeline']['host_cpu_ms'] / b['naive']['host_cpu_ms']
    targets = {
        'a_pipeline_wall_le_2ms': a['pipeline']['wall_ms'] <= 2.0,
        'b_pipeline_host_le_2ms': b['pipeline']['host_cpu_ms'] <= 2.0,
        'b_pipeline_le_fifth_of_naive': ratio_b <= 0.2,
    }
    print(f'bench 1, host cost per decode token ({args.tokens} tokens after a '
          f"{a['pipeline']['prompt_tokens']}-token prompt, median of {args.runs} runs)")
    print(f'  machine: {machine_line(machine())}')
    print('  (a) onnxruntime             wall/token   outside run() (CPU)')
    for k in ('pipeline', 'naive'):
        print(f"      {k:22s} {a[k]['wall_ms']:9.3f} ms {a[k]['host_cpu_ms']:9.3f} ms")
    print(f'      ratio pipeline/naive (wall): {ratio_a:.3f}   target <= 2 ms: '
          f"{verdict(targets['a_pipeline_wall_le_2ms'])}")
    print('  (b) pyaxengine 0.1.3.rc3 + stub NPU')
    print('                             host CPU   host wall   wall/token  stub NPU   flushed')
    for k in ('pipeline', 'pipeline_plain_run', 'naive'):
        r = b[k]
        print(f"      {k:22s} {r['host_cpu_ms']:7.3f} ms {r['host_ms']:8.3f} ms "
              f"{r['wall_ms']:8.2f} ms {r['device_ms']:7.2f} ms {r['flush_mb_per_token']:6.2f} MB")
    print(f'      ratio pipeline/naive (host CPU): {ratio_b:.3f} (1/{1 / ratio_b:.0f})   '
          f"targets <= 2 ms: {verdict(targets['b_pipeline_host_le_2ms'])}, <= 1/5: "
          f"{verdict(targets['b_pipeline_le_fifth_of_naive'])}")
    write_result(args.json, 'decode_host', {
        'tokens': args.tokens, 'runs': args.runs, 'onnxruntime': a, 'emulation': b,
        'pyaxengine': PYAX_RELEASE,
        'ratio_a_wall': ratio_a, 'ratio_b_host': ratio_b, 'targets': targets})
    return 0


if __name__ == '__main__':
    sys.exit(main())
