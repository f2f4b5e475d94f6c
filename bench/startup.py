"""Bench 5: process start to "ready" on the real-shape stand-ins, with the time per stage.

    python bench/startup.py --onnx-dir REAL/onnx --ax-dir REAL/axmodel [--runs 3]

Each run is a fresh ``python -m qwen_vl_ros.cli.describe`` (qwen-vl-describe) process; its
progress lines (Pipeline.load: runtime chosen, vision model, decoder layers, ready) are
timestamped as they arrive, from the moment the process is spawned:

- start -> "loading": interpreter, imports, model directory scan, runtime choice;
- -> vision model loaded; -> 36 decoder layers loaded (one session per layer);
- -> ready: post model, embedding table mapped, tokenizer and chat template.

Backends: onnxruntime (one session per shape group), and AXERA's pyaxengine 0.1.3.rc3 over the
stub NPU of test/npu_stub (one .axmodel per layer; CMM buffers allocated per session by
pyaxengine itself). Baseline: the
demo's loading sequence (bench/_demo_load.py: transformers config/tokenizer/processor,
sessions, np.load of the whole table) on the same files with onnxruntime. On the board the NPU
driver's model loading adds to the session stages; the host stages stay as measured here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    REPO, bench_parser, machine, machine_line, median, npu_stub_env, write_result)

STAGES = (('loading', 'start -> runtime chosen'), ('vision model loaded', 'vision model'),
          ('decoder layers loaded: {n}/{n}', 'decoder layers'), ('model ready', 'post, '
                                                                'embeddings, tokenizer'))


def timeline(cmd: list, env: dict, marks: list) -> dict:
    """Spawn ``cmd``; seconds from spawn until each stderr line containing a mark appears."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=env, cwd=REPO)
    seen = {}
    for line in proc.stderr:
        now = time.perf_counter() - t0
        for mark in marks:
            if mark not in seen and mark in line:
                seen[mark] = now
    proc.wait(timeout=600)
    seen['exit'] = time.perf_counter() - t0
    if proc.returncode != 0 or len(seen) < len(marks) + 1:
        raise RuntimeError(f'{" ".join(cmd)}: exit {proc.returncode}, saw {sorted(seen)}')
    return seen


def pipeline_run(model_dir: Path, backend: str, layers: int) -> dict:
    """Stage durations (s) of one qwen-vl-describe start."""
    env = dict(os.environ)
    if backend == 'axengine':
        env = npu_stub_env()
    marks = [m.format(n=layers) for m, _ in STAGES]
    cmd = [sys.executable, '-m', 'qwen_vl_ros.cli.describe', '--model-dir', str(model_dir),
           '--backend', backend, '--threads', '1', '--prompt', 'hi', '--max-new-tokens', '1']
    seen = timeline(cmd, env, marks)
    out, prev = {}, 0.0
    for mark, (_, label) in zip(marks, STAGES):
        out[label] = seen[mark] - prev
        prev = seen[mark]
    out['ready'] = prev
    return out


def demo_run(model_dir: Path) -> dict:
    """Stage durations (s) of the demo's loading sequence."""
    marks = ['imports', 'config, tokenizer, processor', 'vision', 'layers',
             'post, embeddings (np.load)', 'model load done']
    seen = timeline([sys.executable, str(REPO / 'bench' / '_demo_load.py'), str(model_dir)],
                    dict(os.environ), marks)
    out, prev = {}, 0.0
    for mark in marks[:-1]:
        out[mark] = seen[mark] - prev
        prev = seen[mark]
    out['ready'] = seen['model load done']
    return out


def med(runs: list) -> dict:
    """Median of each stage over runs."""
    return {k: median([r[k] for r in runs]) for k in runs[0]}


def main(argv=None) -> int:
    """Time the starts, print the stages, write the JSON result."""
    p = bench_parser(__doc__, stand_in_dirs=True)
    p.add_argument('--layers', type=int, default=36)
    args = p.parse_args(argv)
    results = {'onnxruntime': [], 'axengine_emulation': [], 'demo': []}
    for _ in range(args.runs):  # interleaved, so that all three see the same page cache
        results['onnxruntime'].append(pipeline_run(args.onnx_dir, 'onnxruntime', args.layers))
        results['axengine_emulation'].append(pipeline_run(args.ax_dir, 'axengine',
                                                          args.layers))
        results['demo'].append(demo_run(args.onnx_dir))
    summary = {k: med(v) for k, v in results.items()}
    ratio = summary['onnxruntime']['ready'] / summary['demo']['ready']
    print(f'bench 5, process start to ready ({args.layers} layers + vision + post, real-shape '
          f'stand-ins; median of {args.runs})')
    print(f'  machine: {machine_line(machine())}')
    for k in ('onnxruntime', 'axengine_emulation', 'demo'):
        s = summary[k]
        stages = ', '.join(f'{label} {1e3 * v:.0f}' for label, v in s.items() if label != 'ready')
        print(f"  {k:19s} ready {s['ready']:6.2f} s   ({stages}; ms)")
    print(f'  pipeline (onnxruntime) / demo load: {ratio:.2f}')
    write_result(args.json, 'startup', {'runs': results, 'median': summary,
                                        'ratio_pipeline_demo': ratio})
    return 0


if __name__ == '__main__':
    sys.exit(main())
