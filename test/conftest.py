"""Shared fixtures: a tiny random-weight Qwen2.5-VL checkpoint and its ONNX stand-in exports.

Built once per test session (a few seconds after the torch import). Without torch (the optional
`export` extra; e.g. the Jazzy venv of `make test-jazzy`, Python 3.10) they are taken from the
directory QVR_TEST_MODELS that a run with torch filled (the Makefile points both runs at
build/test_models); tests that need one that is not there are skipped with that reason.
"""
import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

import loopback_env  # noqa: E402,F401  (loopback DDS, a domain id, no hub: before rclpy)

import pytest  # noqa: E402

HAVE_TORCH = importlib.util.find_spec('torch') is not None
TEST_MODELS = os.environ.get('QVR_TEST_MODELS', '')


@pytest.fixture(scope='session')
def models_dir(tmp_path_factory):
    """Return where the session's tiny models go.

    QVR_TEST_MODELS (emptied first when torch builds them, read as is otherwise), or a
    temporary directory.
    """
    if not TEST_MODELS:
        return tmp_path_factory.mktemp('models')
    path = Path(TEST_MODELS).resolve()
    if HAVE_TORCH:
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
    return path


def _reuse(models_dir: Path, name: str) -> Path:
    """Without torch: a model a torch run left in QVR_TEST_MODELS, or skip saying so."""
    path = models_dir / name
    if (path / '.complete').is_file():
        return path
    pytest.skip(f'no torch here to build the tiny model {name!r}, and none in '
                f'QVR_TEST_MODELS={TEST_MODELS or "(unset)"}: run the tests with torch first '
                '(make pytest), then this venv\'s')


def _built(path: Path) -> Path:
    (path / '.complete').touch()
    return path


@pytest.fixture(scope='session')
def tiny_hf_dir(models_dir):
    """Path of a tiny random-weight Qwen2.5-VL Hugging Face checkpoint (seed 0)."""
    if not HAVE_TORCH:
        return _reuse(models_dir, 'tiny_hf')
    from qwen_vl_ros.export.tiny import build_tiny_checkpoint

    path = models_dir / 'tiny_hf'
    path.mkdir()
    return _built(Path(build_tiny_checkpoint(path, seed=0)))


@pytest.fixture(scope='session')
def tiny_hf_model(tiny_hf_dir):
    """Load the tiny checkpoint in transformers (float32, eager attention, eval): the reference."""
    pytest.importorskip('torch', reason='the transformers reference model needs torch')
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        tiny_hf_dir, attn_implementation='eager')
    return model.float().eval()


@pytest.fixture(scope='session')
def export_variant(tiny_hf_dir, models_dir):
    """Export the tiny checkpoint with given ExportOptions fields, once per set; give its dir.

    A factory: export_variant(image_size=(280, 196)), export_variant(embeddings='bf16'),
    export_variant(image_size=(112, 112), prefill_len=16, histories=(16, 48, 80)).
    """
    cache = {}

    def export(**fields):
        # named by the fields (the exporter, which has ExportOptions, needs torch)
        key = repr(sorted(fields.items()))
        if key not in cache:
            name = 'tiny_onnx_' + hashlib.sha1(key.encode()).hexdigest()[:12]
            if not HAVE_TORCH:
                cache[key] = _reuse(models_dir, name)
            else:
                from qwen_vl_ros.export.exporter import ExportOptions, export_checkpoint
                out = models_dir / name
                out.mkdir()
                cache[key] = _built(Path(export_checkpoint(
                    tiny_hf_dir, out, ExportOptions(**fields), log=lambda *_: None)))
        return cache[key]

    return export


@pytest.fixture(scope='session')
def tiny_onnx_dir(tiny_hf_dir, models_dir):
    """Export the default stand-ins: 448x448 vision, single prefill 320, KV 1023, float32 .npy.

    Made by the `qwen-vl-export` command itself (the installed console script when there is
    one), as a user would run it.
    """
    import subprocess
    import sys

    if not HAVE_TORCH:
        return _reuse(models_dir, 'tiny_onnx_cli')
    out = models_dir / 'tiny_onnx_cli'
    out.mkdir()
    script = Path(sys.executable).parent / 'qwen-vl-export'
    cmd = [str(script)] if script.exists() else [sys.executable, '-m', 'qwen_vl_ros.export.cli']
    subprocess.run(cmd + ['--hf-dir', str(tiny_hf_dir), '--out', str(out)], check=True,
                   capture_output=True, timeout=300)
    return _built(out)
