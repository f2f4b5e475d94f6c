"""transformers' reference values: computed with torch, or read back from a torch run's files.

Where torch is installed (.venv) ``reference`` runs transformers (hf_reference.py) and, when
QVR_TEST_MODELS is set, also writes what it found to QVR_TEST_MODELS/hf_reference/. A venv
without torch (the Jazzy venv of `make test-jazzy`, the transformers 5 venv) reads those files
back, so its pipeline is checked against the same transformers values; a value no torch run
has written is a skip that says so.
"""

import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

HAVE_TORCH = importlib.util.find_spec('torch') is not None


def _key(frames, prompt: str, n: int, second_per_grid_t: float) -> str:
    h = hashlib.sha1(repr((prompt, n, float(second_per_grid_t))).encode())
    for f in frames:
        h.update(repr(f.shape).encode())
        h.update(np.ascontiguousarray(f).tobytes())
    return h.hexdigest()[:16]


def reference(hf_dir, frames, prompt: str, n: int, second_per_grid_t: float = 1.0) -> dict:
    """Return transformers' values for one greedy generation of the tiny checkpoint.

    ``ids`` (n,) greedy tokens, ``logits`` (n, V) float32 per step, ``input_ids`` (T,) of the
    prompt and its 3-D rope ``positions`` (3, T).
    """
    models = os.environ.get('QVR_TEST_MODELS', '')
    path = (Path(models) / 'hf_reference' / f'{_key(frames, prompt, n, second_per_grid_t)}.npz'
            if models else None)
    if HAVE_TORCH:
        import hf_reference as hf
        ids, logits, feed = hf.generate(str(hf_dir), frames, prompt, n, second_per_grid_t)
        ref = dict(ids=np.asarray(ids, np.int64), logits=np.asarray(logits, np.float32),
                   input_ids=feed['input_ids'][0].numpy(),
                   positions=np.asarray(hf.rope_index(str(hf_dir), feed)))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, **ref)
        return ref
    if path is not None and path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    pytest.skip('no torch here for the transformers reference, and no value from a torch run '
                f'in QVR_TEST_MODELS={models or "(unset)"} (run make pytest first)')


def min_top2_gap(logits: np.ndarray) -> float:
    """Smallest gap between the best and second-best logit over the steps."""
    top = np.sort(logits, axis=-1)[:, -2:]
    return float((top[:, 1] - top[:, 0]).min())
