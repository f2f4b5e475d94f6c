"""A checkpoint written by any supported transformers is read right by any other (issue 16).

Each transformers in QVR_TRANSFORMERS_RUNNERS (`make test-export` sets 4.49, 4.57 and 5.x)
writes a tiny tied checkpoint with its own save_pretrained and computes its logits reading it
back itself: the reference. Each then loads every checkpoint as the exporter does
(export.checkpoint.load_checkpoint): logits must equal the writer's, lm_head must be the
embedding table. A 5.x checkpoint read by 4.57 without the exporter's care loses its rope theta
and mrope_section; read by 4.49, every size.

QVR_TRANSFORMERS_RUNNERS: whitespace-separated interpreters, each optionally `PYTHON@DIR` with
DIR put first on PYTHONPATH (a transformers installed with pip --target over that venv).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('torch', reason='the exporter needs torch (pip install .[export])')

SCRIPT = Path(__file__).with_name('transformers_matrix.py')
RUNNERS = os.environ.get('QVR_TRANSFORMERS_RUNNERS', '').split() or [sys.executable]


def _run(runner: str, *args) -> dict:
    python, _, overlay = runner.partition('@')
    env = dict(os.environ)
    if overlay:
        env['PYTHONPATH'] = os.pathsep.join(p for p in (overlay, env.get('PYTHONPATH')) if p)
    proc = subprocess.run([python, str(SCRIPT), *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f'{runner} {args[0]} failed:\n{proc.stderr[-3000:]}'
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope='module')
def written(tmp_path_factory):
    """One checkpoint per runner: [(transformers version, dir)]."""
    out = []
    for i, runner in enumerate(RUNNERS):
        report = _run(runner, 'write', tmp_path_factory.mktemp(f'writer{i}'))
        out.append((report['transformers'], Path(report['dir'])))
    return out


@pytest.fixture(scope='module')
def read(written, tmp_path_factory):
    """{reader index: its report} with every runner reading every checkpoint."""
    dirs = [d for _, d in written]
    return {i: _run(runner, 'read', tmp_path_factory.mktemp(f'reader{i}'), *dirs)
            for i, runner in enumerate(RUNNERS)}


@pytest.mark.parametrize('reader', range(len(RUNNERS)))
@pytest.mark.parametrize('writer', range(len(RUNNERS)))
def test_checkpoint_reads_as_its_writer_reads_it(written, read, writer, reader):
    version, hf_dir = written[writer]
    report = read[reader]
    got = report['read'][writer]
    where = f'written by transformers {version}, read by {report["transformers"]}'
    assert 'error' not in got, f'{where}: {got.get("error")}'
    assert got['lm_head_is_embedding'], f'{where}: lm_head is not the embedding table'
    with np.load(hf_dir / 'native.npz') as want, np.load(got['logits']) as have:
        np.testing.assert_allclose(have['logits'], want['logits'], rtol=1e-4, atol=1e-3,
                                   err_msg=where)


def test_the_majors_are_all_here(written):
    """Make test-export gives both majors; a plain pytest run without them says what it lacks."""
    majors = {version.split('.')[0] for version, _ in written}
    if 'QVR_TRANSFORMERS_RUNNERS' not in os.environ:
        pytest.skip(f'only transformers {sorted(v for v, _ in written)} here: '
                    'QVR_TRANSFORMERS_RUNNERS (set by make test-export) adds the others')
    assert {'4', '5'} <= majors, f'QVR_TRANSFORMERS_RUNNERS gave only {sorted(majors)}'
