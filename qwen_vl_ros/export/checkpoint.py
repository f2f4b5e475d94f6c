"""Load a Hugging Face Qwen2.5-VL checkpoint for export, in its own dtype, with every weight real.

Written for checkpoints saved by either transformers major (4.49-4.57 and 5.x) and loaded by
either. Two traps are closed here:
- transformers 5 writes `tie_word_embeddings` at the top of config.json only; 4.57 reads it from
  the text config, does not tie, and leaves `lm_head.weight` randomly initialised with a warning.
  Tying is done here whenever any level of config.json says so.
- Any other weight the load leaves newly initialised (a missing or renamed tensor) would be
  exported as random numbers: the load is refused with the weights' names.
The model stays in the checkpoint's dtype (bf16 for the released 3B: 7.5 GB, not the 15 GB of
float32); the exporter converts one module at a time.
"""
import json
from pathlib import Path

import torch
import transformers
from transformers import Qwen2_5_VLForConditionalGeneration

LM_HEAD = 'lm_head.weight'


class CheckpointError(ValueError):
    """The checkpoint cannot be exported as it is (the message says why)."""


def load_checkpoint(hf_dir) -> Qwen2_5_VLForConditionalGeneration:
    """Return the checkpoint's model in eval mode, in the dtype its files hold.

    Raises CheckpointError when config.json is missing or when loading would leave any weight
    newly initialised (named in the message), after tying lm_head to the embedding table where
    the config asks for it.
    """
    hf_dir = Path(hf_dir)
    config_path = hf_dir / 'config.json'
    if not config_path.is_file():
        raise CheckpointError(f'{hf_dir} has no config.json: not a Hugging Face checkpoint')
    config = json.loads(config_path.read_text())
    # 'auto' = the dtype of the stored tensors; the keyword was renamed in 4.56 (dtype).
    dtype_kw = 'dtype' if _major() >= 5 else 'torch_dtype'
    model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        hf_dir, attn_implementation='eager', output_loading_info=True, **{dtype_kw: 'auto'})
    missing = set(info.get('missing_keys') or ())
    if ties_embeddings(config):
        tie_lm_head(model)
        missing.discard(LM_HEAD)
    missing = sorted(_strip_prefix(model, k) for k in missing)
    if missing:
        shown = ', '.join(missing[:8]) + (f' and {len(missing) - 8} more' if len(missing) > 8
                                         else '')
        raise CheckpointError(f'{hf_dir}: the checkpoint lacks {shown}; transformers '
                              f'{transformers.__version__} would fill them with random values')
    return model.eval()


def ties_embeddings(config: dict) -> bool:
    """Return True when config.json (top level or text_config) sets tie_word_embeddings."""
    text = config.get('text_config') or {}
    return bool(config.get('tie_word_embeddings') or text.get('tie_word_embeddings'))


def tie_lm_head(model) -> None:
    """Make lm_head use the input embedding table (one tensor, as the real 3B stores it)."""
    model.lm_head.weight = model.get_input_embeddings().weight


def decoder_layers(model) -> torch.nn.ModuleList:
    """Return the decoder layers (model.model.language_model from 4.52, model.model before)."""
    return text_model(model).layers


def text_model(model) -> torch.nn.Module:
    """Return the text transformer: norm, rotary_emb, layers."""
    inner = model.model
    return getattr(inner, 'language_model', inner)


def vision_tower(model) -> torch.nn.Module:
    """Return the vision transformer (model.model.visual from 4.52, model.visual before)."""
    return getattr(model.model, 'visual', None) or model.visual


def text_config(model):
    """Return the language model's config (nested in transformers >= 4.52, top-level before)."""
    return getattr(model.config, 'text_config', model.config)


def _major() -> int:
    return int(transformers.__version__.split('.')[0])


def _strip_prefix(model, key: str) -> str:
    prefix = getattr(model, 'base_model_prefix', '') + '.'
    return key[len(prefix):] if prefix != '.' and key.startswith(prefix) else key
