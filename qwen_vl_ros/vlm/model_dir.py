"""Find the files of a Qwen2.5-VL model directory and read its configuration.

Three layouts are accepted (see ../shared/docs/CONTRACT.md and docs/LAYOUT.md):

- demo layout: axmodels, HF json files and a float32 ``model.embed_tokens.weight.npy``;
- released layout: axmodels and a raw bf16 ``model.embed_tokens.weight.bfloat16.bin``, the
  tokenizer in a separate directory (``tokenizer_dir``);
- ONNX stand-in layout written by ``qwen-vl-export``: ``.onnx`` files, one per shape group.

Nothing about the model's size is assumed here: layer count, hidden size and token ids come from
config.json; prefill and KV lengths come later from the models' own input shapes.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

from .errors import ModelDirError

EMBED_NPY = 'model.embed_tokens.weight.npy'
EMBED_BF16 = 'model.embed_tokens.weight.bfloat16.bin'
TOKENIZER_FILES = ('tokenizer.json', 'vocab.json')
LAYER_RE = re.compile(r'_p(\d+)_l(\d+)_together(?:_g(\d+))?\.(axmodel|onnx)$')
VISION_SIZE_RE = re.compile(r'(\d+)x(\d+)')
VISION_SQUARE_RE = re.compile(r'(?:nchw|nhwc)(\d+)')

LAYOUT_HELP = (
    'expected a Qwen2.5-VL model directory: config.json, generation_config.json, one '
    '*vision*.axmodel (or .onnx), qwen2_5_vl_p<P>_l<i>_together.axmodel for every layer i '
    '(ONNX: qwen2_5_vl_p<P>_l<i>_together_g<group>.onnx), qwen2_5_vl_post.axmodel (.onnx), '
    f'and {EMBED_NPY} (float32) or {EMBED_BF16} (raw bf16); tokenizer files (tokenizer.json or '
    'vocab.json + merges.txt, tokenizer_config.json) in the model directory or in tokenizer_dir'
)


@dataclass(frozen=True)
class TextConfig:
    """The language model's sizes and special token ids, from config.json."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int
    spatial_merge_size: int
    temporal_patch_size: int
    patch_size: int
    tokens_per_second: float

    @property
    def kv_dim(self) -> int:
        """Width of one K or V cache row: head_dim * kv_heads."""
        return self.hidden_size // self.num_heads * self.num_kv_heads


@dataclass
class ModelFiles:
    """Paths of everything a pipeline loads, plus the parsed configuration."""

    root: str
    tokenizer_dir: str
    backend_kind: str                      # 'axmodel' or 'onnx': which runtimes can load it
    vision: str
    post: str
    layers: list[dict[int, str]]           # per layer: shape group -> path (axmodel: {-1: path})
    embeddings: str
    config: TextConfig
    generation_config: dict = field(default_factory=dict)
    image_mean: tuple = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple = (0.26862954, 0.26130258, 0.27577711)
    vision_size_hint: tuple | None = None  # (H, W) read from the vision file's name, if any


def read_json(path: str) -> dict:
    """Parse a JSON file of a model or tokenizer directory; ModelDirError names the file."""
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ModelDirError(f'cannot read {path}: {e}') from e


def _first_json(dirs, name: str) -> dict:
    """Parse the first ``name`` found in ``dirs``; {} when none has it."""
    for d in dirs:
        path = os.path.join(d, name)
        if os.path.exists(path):
            return read_json(path)
    return {}


def parse_text_config(cfg: dict) -> TextConfig:
    """Read the sizes we need from a Qwen2.5-VL config.json (flat 4.x or nested 5.x form)."""
    text = dict(cfg)
    text.update(cfg.get('text_config') or {})
    vision = cfg.get('vision_config') or {}
    try:
        return TextConfig(
            hidden_size=int(text['hidden_size']),
            num_layers=int(text['num_hidden_layers']),
            num_heads=int(text['num_attention_heads']),
            num_kv_heads=int(text.get('num_key_value_heads', text['num_attention_heads'])),
            vocab_size=int(text['vocab_size']),
            image_token_id=int(cfg.get('image_token_id', text.get('image_token_id'))),
            video_token_id=int(cfg.get('video_token_id', text.get('video_token_id'))),
            vision_start_token_id=int(
                cfg.get('vision_start_token_id', text.get('vision_start_token_id'))),
            vision_end_token_id=int(
                cfg.get('vision_end_token_id', text.get('vision_end_token_id'))),
            spatial_merge_size=int(vision.get('spatial_merge_size', 2)),
            temporal_patch_size=int(vision.get('temporal_patch_size', 2)),
            patch_size=int(vision.get('patch_size', vision.get('spatial_patch_size', 14))),
            tokens_per_second=float(vision.get('tokens_per_second', 2)),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ModelDirError(f'config.json lacks a field Qwen2.5-VL needs: {e}') from e


def _vision_size_hint(name: str) -> tuple | None:
    m = VISION_SIZE_RE.search(name)
    if m:
        return int(m.group(1)), int(m.group(2))
    m = VISION_SQUARE_RE.search(name)
    if m:
        return int(m.group(1)), int(m.group(1))
    return None


def find_model_files(model_dir: str, tokenizer_dir: str | None = None) -> ModelFiles:
    """Locate every file of the model; raise one ModelDirError that names all missing ones."""
    if not os.path.isdir(model_dir):
        raise ModelDirError(f'model directory {model_dir!r} does not exist; {LAYOUT_HELP}')
    names = sorted(os.listdir(model_dir))
    missing: list[str] = []
    problems: list[str] = []

    cfg_path = os.path.join(model_dir, 'config.json')
    if 'config.json' not in names:
        raise ModelDirError(f'{model_dir}: missing config.json; {LAYOUT_HELP}')
    raw_cfg = read_json(cfg_path)
    config = parse_text_config(raw_cfg)

    kinds = {n.rsplit('.', 1)[-1] for n in names if n.endswith(('.axmodel', '.onnx'))}
    kind = 'axmodel' if 'axmodel' in kinds else 'onnx' if 'onnx' in kinds else None
    if kind is None:
        raise ModelDirError(f'{model_dir}: no .axmodel or .onnx files; {LAYOUT_HELP}')
    ext = '.' + kind

    vision = [n for n in names if 'vision' in n and n.endswith(ext)]
    if not vision:
        missing.append(f'*vision*{ext}')
    elif len(vision) > 1:
        problems.append(f'several vision models ({", ".join(vision)}): keep one')

    post = [n for n in names if n.endswith('_post' + ext)]
    if not post:
        missing.append(f'qwen2_5_vl_post{ext}')

    layers: list[dict[int, str]] = [{} for _ in range(config.num_layers)]
    prefill_lens = set()
    for n in names:
        m = LAYER_RE.search(n)
        if not m or not n.endswith(ext):
            continue
        layer = int(m.group(2))
        if layer >= config.num_layers:
            problems.append(f'{n} is beyond num_hidden_layers={config.num_layers}')
            continue
        prefill_lens.add(int(m.group(1)))
        group = int(m.group(3)) if m.group(3) is not None else -1
        layers[layer][group] = os.path.join(model_dir, n)
    if len(prefill_lens) > 1:
        problems.append(f'layer files of several prefill lengths {sorted(prefill_lens)}')
    p = f'p{min(prefill_lens)}' if prefill_lens else 'p<P>'
    for i, groups in enumerate(layers):
        if not groups:
            suffix = '_g<group>.onnx' if kind == 'onnx' else '.axmodel'
            missing.append(f'qwen2_5_vl_{p}_l{i}_together{suffix}')
        elif kind == 'onnx' and not {0, 1} <= set(groups):
            missing.append(f'qwen2_5_vl_{p}_l{i}_together_g{{0,1}}.onnx (has {sorted(groups)})')

    if EMBED_NPY in names:
        embeddings = os.path.join(model_dir, EMBED_NPY)
    elif EMBED_BF16 in names:
        embeddings = os.path.join(model_dir, EMBED_BF16)
    else:
        embeddings = ''
        missing.append(f'{EMBED_NPY} or {EMBED_BF16}')

    tok_dir = tokenizer_dir or model_dir
    tok_names = set(os.listdir(tok_dir)) if os.path.isdir(tok_dir) else set()
    if not tok_names & set(TOKENIZER_FILES):
        where = 'tokenizer_dir' if tokenizer_dir else 'the model directory (or set tokenizer_dir)'
        missing.append(f'tokenizer.json or vocab.json+merges.txt in {where} {tok_dir!r}')

    if missing or problems:
        parts = []
        if missing:
            parts.append('missing: ' + '; '.join(missing))
        if problems:
            parts.append('inconsistent: ' + '; '.join(problems))
        raise ModelDirError(f'{model_dir}: ' + ' | '.join(parts) + f'. {LAYOUT_HELP}')

    gen_cfg = _first_json((model_dir, tok_dir), 'generation_config.json')
    pre = _first_json((model_dir, tok_dir), 'preprocessor_config.json')

    return ModelFiles(
        root=model_dir,
        tokenizer_dir=tok_dir,
        backend_kind=kind,
        vision=os.path.join(model_dir, vision[0]),
        post=os.path.join(model_dir, post[0]),
        layers=layers,
        embeddings=embeddings,
        config=config,
        generation_config=gen_cfg,
        image_mean=tuple(pre.get('image_mean', ModelFiles.image_mean)),
        image_std=tuple(pre.get('image_std', ModelFiles.image_std)),
        vision_size_hint=_vision_size_hint(vision[0]),
    )
