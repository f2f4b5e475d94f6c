"""Shared fixtures: a tiny random-weight Qwen2.5-VL checkpoint and its ONNX stand-in exports.

Built once per test session (a few seconds after the torch import). Tests that use them are
skipped when torch (the optional `export` extra) is not installed.
"""
import os

# Network rule: DDS never leaves loopback, and parallel runs do not see each other's nodes.
# Same rule as scripts/ros_env.sh: 1..100 from the pid, QVR_ROS_DOMAIN_ID pins it.
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ['ROS_LOCALHOST_ONLY'] = '1'
os.environ.pop('ROS_STATIC_PEERS', None)
os.environ['ROS_DOMAIN_ID'] = os.environ.get('QVR_ROS_DOMAIN_ID') or str(1 + os.getpid() % 100)
# No model hub here: anything that tries to download fails fast instead of hanging.
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

import pytest  # noqa: E402


@pytest.fixture(scope='session')
def tiny_hf_dir(tmp_path_factory):
    """Path of a tiny random-weight Qwen2.5-VL Hugging Face checkpoint (seed 0)."""
    pytest.importorskip('torch', reason='the tiny checkpoint needs torch (pip install .[export])')
    from qwen_vl_ros.export.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp('tiny_hf'), seed=0)


@pytest.fixture(scope='session')
def tiny_hf_model(tiny_hf_dir):
    """Load the tiny checkpoint in transformers (float32, eager attention, eval): the reference."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        tiny_hf_dir, attn_implementation='eager')
    return model.float().eval()


@pytest.fixture(scope='session')
def export_variant(tiny_hf_dir, tmp_path_factory):
    """Export the tiny checkpoint with given ExportOptions fields, once per set; give its dir.

    A factory: export_variant(image_size=(280, 196)), export_variant(embeddings='bf16'),
    export_variant(image_size=(112, 112), prefill_len=16, histories=(16, 48, 80)).
    """
    from qwen_vl_ros.export.exporter import ExportOptions, export_checkpoint

    cache = {}

    def export(**fields):
        options = ExportOptions(**fields)
        if options not in cache:
            out = tmp_path_factory.mktemp('tiny_onnx')
            cache[options] = export_checkpoint(tiny_hf_dir, out, options, log=lambda *_: None)
        return cache[options]

    return export


@pytest.fixture(scope='session')
def tiny_onnx_dir(tiny_hf_dir, tmp_path_factory):
    """Export the default stand-ins: 448x448 vision, single prefill 320, KV 1023, float32 .npy.

    Made by the `qwen-vl-export` command itself (the installed console script when there is
    one), as a user would run it.
    """
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path_factory.mktemp('tiny_onnx_cli')
    script = Path(sys.executable).parent / 'qwen-vl-export'
    cmd = [str(script)] if script.exists() else [sys.executable, '-m', 'qwen_vl_ros.export.cli']
    subprocess.run(cmd + ['--hf-dir', str(tiny_hf_dir), '--out', str(out)], check=True,
                   capture_output=True, timeout=300)
    return out
