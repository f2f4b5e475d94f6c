"""Shared helpers of the benchmarks: machine facts, statistics, result files, paths."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NPU_STUB = REPO / 'test' / 'npu_stub'
SHARED = REPO.parent / 'shared'
# The pyaxengine release the benchmarks run (AXERA's code, over the stub NPU libraries).
PYAXENGINE = SHARED / 'pyaxengine' / 'pyaxengine-0.1.3.rc3.tar.gz'
REAL_CONFIG = SHARED / 'qwen2_5_vl_3b'
DEMO_IMAGE = SHARED / 'seed' / 'demo.jpg'


def bench_parser(doc: str, stand_in_dirs: bool = False) -> argparse.ArgumentParser:
    """Start a bench's command line: its docstring as help, --json (read by run_all).

    ``stand_in_dirs`` adds the real-shape stand-in directories (--onnx-dir, --ax-dir) and --runs.
    """
    p = argparse.ArgumentParser(description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--json', help='also write the figures to this JSON file')
    if stand_in_dirs:
        p.add_argument('--onnx-dir', required=True, type=Path)
        p.add_argument('--ax-dir', required=True, type=Path)
        p.add_argument('--runs', type=int, default=3)
    return p


def demo_image_bgr():
    """Return AXERA's demo photo (../shared/seed/demo.jpg), or a synthetic 448x448 scene."""
    import cv2
    import numpy as np
    if DEMO_IMAGE.is_file():
        return cv2.imread(str(DEMO_IMAGE))
    y, x = np.mgrid[0:448, 0:448]
    img = np.stack([(x * 255 // 447), (y * 255 // 447), ((x + y) * 255 // 894)], -1)
    img = img.astype(np.uint8)
    cv2.circle(img, (150, 200), 80, (40, 90, 220), -1)
    cv2.rectangle(img, (260, 60), (400, 300), (230, 200, 40), -1)
    cv2.putText(img, 'qwen', (40, 400), cv2.FONT_HERSHEY_SIMPLEX, 3, (255, 255, 255), 6)
    noise = np.random.default_rng(0).normal(0, 6, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def demo_image_file(directory) -> Path:
    """Return the demo image's path (written into ``directory`` without ../shared)."""
    if DEMO_IMAGE.is_file():
        return DEMO_IMAGE
    import cv2
    path = Path(directory) / 'demo.png'
    cv2.imwrite(str(path), demo_image_bgr())
    return path


def machine() -> dict:
    """CPU model, cores, Python and library versions, date: printed with every result."""
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    cpu = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    info = {'cpu': cpu, 'cores': os.cpu_count(), 'python': platform.python_version(),
            'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}
    for mod in ('onnxruntime', 'numpy', 'cv2'):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = 'not installed'
    return info


def machine_line(info: dict) -> str:
    """One line naming the machine."""
    return (f"{info['cpu']}, {info['cores']} cores, Python {info['python']}, onnxruntime "
            f"{info['onnxruntime']}, numpy {info['numpy']}, OpenCV {info['cv2']}; "
            f"{info['date']}")


def median(xs) -> float:
    """Median of a non-empty sequence."""
    return float(statistics.median(xs))


def percentile(xs, q: float) -> float:
    """q-th percentile (0..100), linear interpolation."""
    xs = sorted(xs)
    if len(xs) == 1:
        return float(xs[0])
    k = (len(xs) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (k - lo))


def timed(fn, repeat: int, warmup: int = 2) -> list:
    """Run ``fn`` warmup + repeat times; return the repeat wall times in ms."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(1e3 * (time.perf_counter() - t0))
    return out


def write_result(path, name: str, result: dict) -> None:
    """Write one benchmark's result (with the machine) as JSON, and echo where it went."""
    result = dict(result, bench=name, machine=machine())
    if path:
        Path(path).write_text(json.dumps(result, indent=2) + '\n')


def verdict(ok: bool) -> str:
    """'met' / 'NOT met'."""
    return 'met' if ok else 'NOT met'


def npu_stub_env(tarball=PYAXENGINE, card: bool = False) -> dict:
    """Return the environment running AXERA's pyaxengine ``tarball`` over the stub NPU.

    test/npu_stub; ``card``: the M.2 card's libaxcl_rt alone (pyaxengine picks
    AXCLRTExecutionProvider).
    """
    if not Path(tarball).exists():
        raise SystemExit(f'{tarball} is absent: the pyaxengine releases live in ../shared')
    sys.path.insert(0, str(NPU_STUB))
    try:
        from build import stub_env
    finally:
        sys.path.remove(str(NPU_STUB))
    return stub_env(tarball, card=card)


def run_under_npu_stub(tarball=PYAXENGINE, card: bool = False) -> None:
    """Re-execute this script under the stub NPU environment, unless already inside it.

    The dynamic loader reads LD_LIBRARY_PATH at process start only, so the stub libraries must
    be on it before Python starts (scripts/with_npu_stub.sh does the same from the shell).
    """
    if os.environ.get('AX_STUB_NPU') != '1':
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable] + sys.argv, npu_stub_env(tarball, card))
