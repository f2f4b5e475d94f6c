"""Load a Hugging Face Qwen2.5-VL checkpoint for export, in its own dtype, with every weight real.

Written for checkpoints saved by either transformers major (4.49-4.57 and 5.x) and loaded by
either. The traps closed here:
- transformers 5 writes `tie_word_embeddings` at the top of config.json only; 4.57 reads it from
  the text config, does not tie, and leaves `lm_head.weight` randomly initialised with a warning.
  Tying is done here whenever any level of config.json says so.
- transformers 5 writes the rotary settings as `text_config.rope_parameters` (mrope_section and
  rope_theta together); 4.x reads `rope_scaling` and `rope_theta`, finds neither and runs with
  its default theta and no mrope_section. 4.49-4.51 also read the language model's sizes from the
  top level only, where 5.x writes none. `as_read_by` rewrites config.json for the installed 4.x.
- Any other weight the load leaves newly initialised (a missing or renamed tensor) would be
  exported as random numbers: the load is refused with the weights' names.
The model stays in the checkpoint's dtype (bf16 for the released 3B: 7.5 GB, not the 15 GB of
float32); the exporter converts one module at a time.
"""
import copy
import json
from pathlib import Path

import torch
import transformers
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

LM_HEAD = 'lm_head.weight'
VISION_ROPE_THETA = 10000.0  # Qwen2_5_VisionRotaryEmbedding's default, fixed in 4.x


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
    kwargs = {'dtype' if _version()[0] >= 5 else 'torch_dtype': 'auto'}
    readable = as_read_by(config, _version())
    if readable != config:  # else transformers reads config.json itself, as it always does
        kwargs['config'] = Qwen2_5_VLConfig.from_dict(readable)
    model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        hf_dir, attn_implementation='eager', output_loading_info=True, **kwargs)
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


def as_read_by(config: dict, version: tuple[int, int]) -> dict:
    """Return config.json (a dict) in the form transformers `version` (major, minor) reads.

    5.x reads every earlier form itself: the dict is returned as is. For 4.x a config written by
    5.x gets `rope_scaling` and `rope_theta` from `text_config.rope_parameters` (the 5.x names,
    configuration_qwen2_5_vl.py), and below 4.52 (no nested text config) the text config's
    keys at the top level as well. Raises CheckpointError for a vision rope theta other than
    10000, which 4.x's vision tower has built in.
    """
    if version[0] >= 5:
        return config
    config = copy.deepcopy(config)
    text = config.get('text_config')
    if isinstance(text, dict):
        rope = text.get('rope_parameters')
        if rope and 'rope_scaling' not in text:
            text['rope_scaling'] = {k: v for k, v in rope.items() if k != 'rope_theta'}
            if 'rope_theta' in rope:
                text['rope_theta'] = rope['rope_theta']
        if tuple(version) < (4, 52):
            for key, value in config.pop('text_config').items():
                config.setdefault(key, value)
    if 'dtype' in config and tuple(version) < (4, 56):  # 4.56 renamed torch_dtype to dtype
        config.setdefault('torch_dtype', config['dtype'])
    vision_rope = (config.get('vision_config') or {}).get('rope_parameters') or {}
    if float(vision_rope.get('rope_theta', VISION_ROPE_THETA)) != VISION_ROPE_THETA:
        raise CheckpointError(f'vision rope_theta {vision_rope["rope_theta"]}: transformers '
                              f'{transformers.__version__} has {VISION_ROPE_THETA} built in; '
                              'export this checkpoint with transformers 5')
    return config


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


def _version() -> tuple[int, int]:
    major, minor = transformers.__version__.split('.')[:2]
    return int(major), int(minor)


def _strip_prefix(model, key: str) -> str:
    prefix = getattr(model, 'base_model_prefix', '') + '.'
    return key[len(prefix):] if prefix != '.' and key.startswith(prefix) else key
