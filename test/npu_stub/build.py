"""Build the stub NPU libraries and unpack a pyaxengine release; give the environment to run it.

    python3 test/npu_stub/build.py [--card] TARBALL   # prints `export NAME=value` lines

- ``libax_sys.so`` and ``libax_engine.so`` are compiled from ax_sys.c / ax_engine.c with the
  system C compiler into ``CACHE/libs-<hash>/``, ``libaxcl_rt.so`` (the M.2 card, axcl_rt.c)
  into ``CACHE/libs-<hash>/card/`` (hash of the C sources and the compiler's
  version: a second run is free); each carries its SONAME, which ``ctypes.util.find_library``
  reports and cffi's ``dlopen`` then finds on ``LD_LIBRARY_PATH``.
- the release tarball (AXERA's source, unmodified) is unpacked into
  ``CACHE/releases/<name>-<hash>/``; the older ``load_from_model`` wheel gets legacy_runner.py
  as its ``axengine/_C.py`` (its compiled runner is not available).
- the environment: ``LD_LIBRARY_PATH`` (the stub libraries first), ``PYTHONPATH`` (the
  release, then python/ here with the NPU host and its sitecustomize), ``AX_STUB_NPU=1``, and
  the loopback DDS settings every process here runs with.

CACHE is ``$QVR_NPU_STUB_CACHE``, else ``<repo>/build/npu_stub``. Builds are written to a
temporary directory and renamed, so concurrent runs do not see half-built files.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SOURCES = ('ax_stub.h', 'stub_fill.h', 'ax_sys.c', 'ax_engine.c', 'axcl_rt.c')
CARD = 'card'  # libaxcl_rt.so alone: what a host with an M.2 card has
CFLAGS = ['-O2', '-Wall', '-Wextra', '-fPIC', '-shared', '-pthread']


def cache_root() -> Path:
    """Where builds go: $QVR_NPU_STUB_CACHE or <repo>/build/npu_stub."""
    return Path(os.environ.get('QVR_NPU_STUB_CACHE') or REPO / 'build' / 'npu_stub')


def _publish(tmp: Path, final: Path) -> Path:
    try:
        os.rename(tmp, final)
    except OSError:  # another process published it first
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def build_libs(root: Path | None = None) -> Path:
    """Compile the two stub libraries once per source hash; return their directory."""
    root = root or cache_root()
    cc = os.environ.get('CC', 'cc')
    version = subprocess.run([cc, '--version'], capture_output=True, text=True, check=True).stdout
    digest = hashlib.sha256(version.encode())
    for name in SOURCES:
        digest.update((HERE / name).read_bytes())
    final = root / f'libs-{digest.hexdigest()[:16]}'
    if (final / CARD / 'libaxcl_rt.so').exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix='.libs-'))
    subprocess.run([cc, *CFLAGS, '-Wl,-soname,libax_sys.so', '-o', str(tmp / 'libax_sys.so'),
                    str(HERE / 'ax_sys.c')], check=True)
    subprocess.run([cc, *CFLAGS, '-Wl,-soname,libax_engine.so', '-o',
                    str(tmp / 'libax_engine.so'), str(HERE / 'ax_engine.c'), f'-L{tmp}',
                    '-lax_sys', '-Wl,-rpath,$ORIGIN'], check=True)
    (tmp / CARD).mkdir()
    subprocess.run([cc, *CFLAGS, '-Wl,-soname,libaxcl_rt.so', '-o',
                    str(tmp / CARD / 'libaxcl_rt.so'), str(HERE / 'axcl_rt.c')], check=True)
    return _publish(tmp, final)


def unpack_release(tarball, root: Path | None = None) -> Path:
    """Unpack a pyaxengine tarball once; return the directory to put on sys.path."""
    root, tarball = root or cache_root(), Path(tarball)
    digest = hashlib.sha256(tarball.read_bytes())
    digest.update((HERE / 'legacy_runner.py').read_bytes())
    name = tarball.name.removesuffix('.tar.gz')
    final = root / 'releases' / f'{name}-{digest.hexdigest()[:12]}'
    if not final.exists():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix='.rel-'))
        with tarfile.open(tarball) as tar:
            if hasattr(tarfile, 'data_filter'):  # Python >= 3.11.4: refuse odd members
                tar.extractall(tmp, filter='data')
            else:
                tar.extractall(tmp)
        for init in tmp.rglob('axengine/__init__.py'):
            if (init.parent / '_handle.py').exists():  # the older wheel: add the runner
                shutil.copy(HERE / 'legacy_runner.py', init.parent / '_C.py')
        final = _publish(tmp, final)
    inits = sorted(final.rglob('axengine/__init__.py'), key=lambda p: len(p.parts))
    if not inits:
        raise ValueError(f'{tarball}: no axengine package inside')
    return inits[0].parent.parent


def stub_env(tarball, base: dict | None = None, card: bool = False) -> dict:
    """Environment that runs ``tarball``'s pyaxengine over the stub NPU (see the docstring).

    ``card``: only ``libaxcl_rt.so`` on the library path (a host with an AX650N M.2 card), so
    pyaxengine finds no ``ax_engine`` and picks ``AXCLRTExecutionProvider`` by itself.
    """
    env = dict(os.environ if base is None else base)
    libs, release = build_libs(), unpack_release(tarball)
    if card:
        libs = libs / CARD

    def prepend(var, *paths):
        env[var] = os.pathsep.join([str(p) for p in paths] + ([env[var]] if env.get(var) else []))

    prepend('LD_LIBRARY_PATH', libs)
    prepend('PYTHONPATH', release, HERE / 'python')
    env['AX_STUB_NPU'] = '1'
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env['ROS_LOCALHOST_ONLY'] = '1'
    env.setdefault('ROS_DOMAIN_ID', os.environ.get('QVR_ROS_DOMAIN_ID') or
                   str(1 + os.getpid() % 100))
    return env


def main(argv=None) -> int:
    """Print the environment of ``stub_env`` as shell export lines."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--card', action='store_true',
                   help='the M.2 card: libaxcl_rt.so only (AXCLRTExecutionProvider)')
    p.add_argument('tarball')
    args = p.parse_args(argv)
    env = stub_env(args.tarball, base={k: v for k, v in os.environ.items()}, card=args.card)
    keys = ('LD_LIBRARY_PATH', 'PYTHONPATH', 'AX_STUB_NPU', 'ROS_AUTOMATIC_DISCOVERY_RANGE',
            'ROS_LOCALHOST_ONLY', 'ROS_DOMAIN_ID')
    for k in keys:
        print(f'export {k}={shlex.quote(env[k])}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
