"""Export a Hugging Face Qwen2.5-VL checkpoint to the ONNX stand-in directory (docs/LAYOUT.md)."""
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from . import files
from .graph_io import export_graph
from .layer import DecoderLayerStandIn, RopeTables, example_inputs, mrope_section
from .post import PostStandIn
from .shapes import LAYER_INPUTS, LAYER_OUTPUTS, layer_groups, max_context
from .vision import INPUT_NAME, OUTPUT_NAME, VisionStandIn, example_input


@dataclass(frozen=True)
class ExportOptions:
    """What to build: image (or video frame) size, prefill / chunk length, cache length."""
    image_size: tuple[int, int] = (448, 448)   # (H, W)
    prefill_len: int = 320
    kv_len: int = 1023
    histories: tuple[int, ...] = ()           # chunk histories H_g of a chunked build
    embeddings: str = 'npy'                   # 'npy' (float32) or 'bf16' (raw .bin)


def vision_file(height: int, width: int) -> str:
    return f'qwen2_5_vl_vision_{height}x{width}.onnx'


def layer_file(prefill_len: int, layer: int, group: int) -> str:
    return f'qwen2_5_vl_p{prefill_len}_l{layer}_together_g{group}.onnx'


POST_FILE = 'qwen2_5_vl_post.onnx'


def export_checkpoint(hf_dir, out_dir, options: ExportOptions = ExportOptions(), log=print) -> Path:
    """Write every model and file of the stand-in directory `out_dir`; returns its path."""
    hf_dir, out = Path(hf_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir, attn_implementation='eager')
    # Loaded weights may be bf16 (the real checkpoint): the stand-ins compute in float32.
    model = model.float().eval()
    log(f'loaded {hf_dir} in {time.perf_counter() - start:.1f} s')

    _export_vision(model, hf_dir, out, options.image_size)
    _export_layers(model, out, options)
    export_graph(PostStandIn(model.model.language_model.norm, model.lm_head),
                 (torch.zeros(1, 1, text_config(model).hidden_size),), out / POST_FILE,
                 ('input',), ('output',))
    table = model.get_input_embeddings().weight.detach().numpy()
    files.write_embeddings(table, out, options.embeddings)
    files.copy_hf_files(hf_dir, out)
    log(f'exported {out} in {time.perf_counter() - start:.1f} s')
    return out


def text_config(model):
    """The language model's config (nested in transformers >= 4.52, top-level before)."""
    return getattr(model.config, 'text_config', model.config)


def _export_vision(model, hf_dir: Path, out: Path, image_size: tuple[int, int]) -> None:
    vcfg = model.config.vision_config
    unit = vcfg.patch_size * vcfg.spatial_merge_size
    height, width = image_size
    if height % unit or width % unit or height <= 0 or width <= 0:
        raise ValueError(f'image size {height}x{width} must be positive multiples of {unit}')
    pre = json.loads((hf_dir / 'preprocessor_config.json').read_text())
    gh, gw = height // vcfg.patch_size, width // vcfg.patch_size
    wrapper = VisionStandIn(model.model.visual, gh, gw, pre['image_mean'], pre['image_std'])
    export_graph(wrapper.eval(), (example_input(gh, gw, vcfg.temporal_patch_size, vcfg.patch_size),),
                 out / vision_file(height, width), (INPUT_NAME,), (OUTPUT_NAME,))


def _export_layers(model, out: Path, options: ExportOptions) -> None:
    cfg = text_config(model)
    head_dim = getattr(cfg, 'head_dim', None) or cfg.hidden_size // cfg.num_attention_heads
    if 2 * sum(mrope_section(cfg)) != head_dim:
        raise ValueError(f'mrope_section {mrope_section(cfg)} does not cover head_dim {head_dim}')
    groups = layer_groups(cfg.hidden_size, head_dim * cfg.num_key_value_heads,
                          options.prefill_len, options.kv_len, options.histories)
    rotary = model.model.language_model.rotary_emb
    # Positions never exceed the token count for text and images; video temporal ids can run
    # ahead of it (group * seconds * tokens_per_second), so the tables get twice the room.
    rope = RopeTables(rotary.inv_freq, rotary.attention_scaling, 2 * max_context(groups))
    for i, layer in enumerate(model.model.language_model.layers):
        for group in groups:
            wrapper = DecoderLayerStandIn(layer, cfg, rope, group).eval()
            export_graph(wrapper, example_inputs(group), out / layer_file(options.prefill_len, i, group.index),
                         LAYER_INPUTS, LAYER_OUTPUTS, uint32_inputs=('indices',))
