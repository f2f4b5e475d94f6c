"""Bench 1c: decode per token on an AX650N M.2 card (stub): traffic over the link, host CPU.

    python bench/decode_card.py --ax-dir REAL/axmodel [--tokens 48] [--runs 3]

Models: the real-shape stand-ins of bench/standins.py (36 layers, hidden 2048, kv 256 x 1023,
vocab 151936, bf16 I/O), packed for the stub NPU. AXERA's pyaxengine 0.1.3.rc3
(../shared/pyaxengine, unmodified) runs over the card stub (test/npu_stub/axcl_rt.c,
libaxcl_rt.so alone, so pyaxengine picks AXCLRTExecutionProvider by itself; the script
re-executes itself in that environment). One image + prompt (281 tokens), then N decode steps:
the pipeline with the KV cache on the card (runtime/axclrt_kv.py), the pipeline on plain run()
(the fallback: whole caches fed), and the naive loop of AXERA's python/infer.py on the same API.

Per token: bytes and axclrtMemcpy calls host -> card and card -> host (counted in the stub's
axclrtMemcpy: exactly what crosses PCIe on the card; device-to-device copies stay on the card),
and host CPU (this thread's CPU outside the stub NPU's runs).

The link time is an ESTIMATE, not a measurement: bytes / 0.45 GB/s + 50 us per call (a Raspberry
Pi 5's PCIe 2.0 x1 link as AXERA's and M5Stack's users report it; the per-call figure is an
assumed driver round trip), set next to the published 207 ms per token of Qwen2.5-VL-3B on a
Pi 5 + LLM-8850 (4.83 tok/s, AXERA's C++ runner).

Targets: pipeline <= 1 MB over the link per decode token; estimated link time < 2 % of 207 ms.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_parser, machine, machine_line, run_under_npu_stub, verdict, write_result  # noqa: E402,E501
from decode_host import PYAX_RELEASE, pyaxengine_part  # noqa: E402

LINK_BYTES_PER_S = 0.45e9
LINK_S_PER_CALL = 50e-6
PUBLISHED_MS_PER_TOKEN = 207.0  # 4.83 tok/s, Pi 5 + LLM-8850 (AXERA's runner)
KINDS = ('pipeline', 'pipeline_plain_run', 'naive')


def link_device():
    """device() for decode_host.pyaxengine_part: NPU time, its CPU, link bytes and calls."""
    import npu_host
    stats = npu_host.STATS

    def device():
        link = npu_host.link_stats()
        moved = link['host_to_device']['bytes'] + link['device_to_host']['bytes']
        calls = link['host_to_device']['calls'] + link['device_to_host']['calls']
        return stats.npu_s, stats.npu_cpu_s, moved, calls

    return device


def estimate(row: dict) -> dict:
    """Give one row's link figures: MB and calls per token, estimated ms and share of the token."""
    mb, calls = row['flush_mb_per_token'], row['calls_per_token']
    ms = 1e3 * (mb * 2**20 / LINK_BYTES_PER_S + calls * LINK_S_PER_CALL)
    return {'link_mb_per_token': mb, 'link_calls_per_token': calls,
            'link_ms_estimate': ms, 'link_share_of_token': ms / PUBLISHED_MS_PER_TOKEN,
            'host_cpu_ms': row['host_cpu_ms'], 'wall_ms': row['wall_ms']}


def main(argv=None) -> int:
    """Run the three decode loops on the card stub, print the figures, write the JSON."""
    p = bench_parser(__doc__)
    p.add_argument('--ax-dir', required=True, type=Path)
    p.add_argument('--onnx-dir', type=Path, help='ignored (run_all passes the stand-ins)')
    p.add_argument('--runs', type=int, default=3)
    p.add_argument('--tokens', type=int, default=48)
    args = p.parse_args(argv)
    run_under_npu_stub(card=True)
    import npu_host
    assert npu_host.on_card(), 'the card stub is not the only NPU runtime'
    raw = pyaxengine_part(args.ax_dir, args.tokens, args.runs, link_device())
    rows = {k: estimate(raw[k]) for k in KINDS}
    pipe, naive = rows['pipeline'], rows['naive']
    targets = {'pipeline_le_1MB_per_token': pipe['link_mb_per_token'] <= 1.0,
               'pipeline_link_lt_2pct': pipe['link_share_of_token'] < 0.02}
    ratio = pipe['link_mb_per_token'] / naive['link_mb_per_token']
    print(f'bench 1c, decode per token on the M.2 card stub ({args.tokens} tokens after a '
          f"{raw['pipeline']['prompt_tokens']}-token prompt, median of {args.runs} runs)")
    print(f'  machine: {machine_line(machine())}')
    print(f'  {PYAX_RELEASE}, AXCLRTExecutionProvider (libaxcl_rt stub)')
    print('                         link MB   memcpy calls  est. link ms  % of 207 ms  '
          'host CPU')
    for k in KINDS:
        r = rows[k]
        print(f"  {k:22s} {r['link_mb_per_token']:8.3f} {r['link_calls_per_token']:11.1f} "
              f"{r['link_ms_estimate']:12.2f} {100 * r['link_share_of_token']:10.2f} % "
              f"{r['host_cpu_ms']:7.2f} ms")
    print(f'  ratio pipeline/naive (link bytes): {ratio:.4f}   ESTIMATE at 0.45 GB/s and 50 us '
          'per call')
    print(f"  targets: <= 1 MB per token {verdict(targets['pipeline_le_1MB_per_token'])}, "
          f"estimated link < 2 % of the token {verdict(targets['pipeline_link_lt_2pct'])}")
    write_result(args.json, 'decode_card', {
        'tokens': args.tokens, 'runs': args.runs, 'rows': rows, 'raw': raw,
        'pyaxengine': PYAX_RELEASE, 'link_bytes_per_s': LINK_BYTES_PER_S,
        'link_s_per_call': LINK_S_PER_CALL, 'published_ms_per_token': PUBLISHED_MS_PER_TOKEN,
        'ratio_link_bytes': ratio, 'targets': targets})
    return 0


if __name__ == '__main__':
    sys.exit(main())
