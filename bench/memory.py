"""Bench 3: peak resident memory of qwen-vl-describe with the real 151936 x 2048 table.

    python bench/memory.py --npy-dir REAL/onnx --bf16-dir REAL/onnx_bf16

One image, 16 new tokens, onnxruntime on the real-shape stand-ins (bench/standins.py), each run
a fresh process (bench/_rss_probe.py): the table as the pipeline maps it (float32 .npy and raw
bf16 .bin) vs read whole first as the demo does (np.load). Reported: peak RSS (VmHWM), and what
the table itself keeps resident (its mapping's pages, or the array read into memory).

Target: the table adds at most 50 MB resident.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    bench_parser, demo_image_file, machine, machine_line, verdict, write_result)

PROBE = Path(__file__).resolve().parent / '_rss_probe.py'
MB = 2**20


def probe(model_dir: Path, mode: str) -> dict:
    """Run qwen-vl-describe once under the probe; return its figures."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / 'rss.json'
        cmd = [sys.executable, str(PROBE), str(out), mode, '--', '--model-dir', str(model_dir),
               '--backend', 'onnxruntime', '--threads', '1', '--image', str(demo_image_file(tmp)),
               '--max-new-tokens', '16', '--json']
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if run.returncode != 0:
            raise RuntimeError(f'{" ".join(cmd)} failed:\n{run.stderr[-2000:]}')
        return json.loads(out.read_text())


def main(argv=None) -> int:
    """Run the three cases, print the figures, write the JSON result."""
    p = bench_parser(__doc__)
    p.add_argument('--npy-dir', required=True, type=Path)
    p.add_argument('--bf16-dir', required=True, type=Path)
    args = p.parse_args(argv)
    runs = {'npy_mmap': probe(args.npy_dir, 'mmap'), 'bf16_mmap': probe(args.bf16_dir, 'mmap'),
            'npy_whole': probe(args.npy_dir, 'whole')}
    for r in runs.values():
        r['table_resident'] = max(r['table_mapped_rss'] or 0, r['table_in_memory'])
    adds = max(runs['npy_mmap']['table_resident'], runs['bf16_mmap']['table_resident'])
    base = runs['npy_whole']
    ok = adds <= 50 * MB
    print('bench 3, peak resident memory of qwen-vl-describe (one image, 16 tokens, '
          'onnxruntime, real-shape stand-ins)')
    print(f'  machine: {machine_line(machine())}')
    print('  table                       peak RSS     table resident')
    for k, label in (('npy_mmap', 'float32 .npy, mapped'), ('bf16_mmap', 'bf16 .bin, mapped'),
                     ('npy_whole', 'float32 .npy, np.load')):
        r = runs[k]
        print(f"  {label:26s} {r['VmHWM'] / MB:8.1f} MB  {r['table_resident'] / MB:9.1f} MB")
    print(f"  mapped vs loaded whole: peak {runs['npy_mmap']['VmHWM'] / MB:.0f} MB vs "
          f"{base['VmHWM'] / MB:.0f} MB (ratio {runs['npy_mmap']['VmHWM'] / base['VmHWM']:.2f});"
          f' the table adds at most {adds / MB:.1f} MB (target <= 50 MB: {verdict(ok)})')
    write_result(args.json, 'memory', {'runs': runs, 'table_adds_bytes': adds,
                                       'targets': {'table_adds_le_50MB': ok}})
    return 0


if __name__ == '__main__':
    sys.exit(main())
