"""Checkpoints the exporter must take or refuse (issue 16): tied embeddings, missing weights.

transformers 5 saves a tied checkpoint with `tie_word_embeddings` at the top of config.json only
and without an `lm_head.weight` tensor; 4.57 then left lm_head random. Here the tiny checkpoint
is rewritten that way (the tensor removed from model.safetensors with safetensors itself, the
flag moved to the top level, a nested text_config) and exported: the post model's lm_head must
equal the embedding table. A checkpoint that lacks any other weight is refused with its name.
"""
import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip('torch', reason='the exporter needs torch (pip install .[export])')
from safetensors.numpy import load_file, save_file  # noqa: E402

from qwen_vl_ros.export.checkpoint import CheckpointError, load_checkpoint  # noqa: E402


def _rewrite(src, dst, drop: str, config_edit) -> None:
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / 'model.safetensors'))
    assert drop in tensors or drop == 'lm_head.weight'
    tensors.pop(drop, None)
    save_file(tensors, str(dst / 'model.safetensors'), metadata={'format': 'pt'})
    cfg = json.loads((dst / 'config.json').read_text())
    config_edit(cfg)
    (dst / 'config.json').write_text(json.dumps(cfg))


def _as_saved_by_5(cfg: dict) -> None:
    text_keys = ('hidden_size', 'intermediate_size', 'num_attention_heads', 'num_hidden_layers',
                 'num_key_value_heads', 'rms_norm_eps', 'rope_theta', 'vocab_size',
                 'rope_scaling', 'max_position_embeddings', 'hidden_act')
    cfg['text_config'] = {k: cfg[k] for k in text_keys if k in cfg}
    cfg['tie_word_embeddings'] = True


def test_tied_checkpoint_without_lm_head_gets_the_embedding_table(tiny_hf_dir, tmp_path):
    dst = tmp_path / 'tied5'
    _rewrite(tiny_hf_dir, dst, 'lm_head.weight', _as_saved_by_5)
    model = load_checkpoint(dst)
    embed = model.get_input_embeddings().weight.detach().numpy()
    np.testing.assert_array_equal(model.lm_head.weight.detach().numpy(), embed)
    # and the table is the stored one, not a fresh draw
    stored = load_file(str(tiny_hf_dir / 'model.safetensors'))
    key = next(k for k in stored if k.endswith('embed_tokens.weight'))
    np.testing.assert_array_equal(embed, stored[key])


def test_a_missing_weight_is_refused_with_its_name(tiny_hf_dir, tmp_path):
    stored = load_file(str(tiny_hf_dir / 'model.safetensors'))
    victim = next(k for k in sorted(stored) if k.endswith('layers.1.mlp.up_proj.weight'))
    dst = tmp_path / 'missing'
    _rewrite(tiny_hf_dir, dst, victim, lambda cfg: None)
    with pytest.raises(CheckpointError, match=r'layers\.1\.mlp\.up_proj\.weight'):
        load_checkpoint(dst)


def test_untied_checkpoint_without_lm_head_is_refused(tiny_hf_dir, tmp_path):
    dst = tmp_path / 'untied'

    def untie(cfg):
        cfg['tie_word_embeddings'] = False
    _rewrite(tiny_hf_dir, dst, 'lm_head.weight', untie)
    with pytest.raises(CheckpointError, match='lm_head.weight'):
        load_checkpoint(dst)
