"""Export a Hugging Face Qwen2.5-VL checkpoint to the ONNX stand-in directory (docs/LAYOUT.md)."""
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from . import files
from .graph_io import SharedWeights, export_graph, trace_graph
from .layer import DecoderLayerStandIn, RopeTables, example_inputs, mrope_section
from .post import PostStandIn
from .shapes import LAYER_INPUTS, LAYER_OUTPUTS, LayerGroup, layer_groups, max_context
from .vision import INPUT_NAME, OUTPUT_NAME, VisionStandIn, example_input


@dataclass(frozen=True)
class ExportOptions:
    """What to build: image (or video frame) size, prefill / chunk length, cache length."""

    image_size: tuple[int, int] = (448, 448)   # (H, W)
    prefill_len: int = 320
    kv_len: int = 1023
    histories: tuple[int, ...] = ()           # chunk histories H_g of a chunked build
    embeddings: str = 'npy'                   # 'npy' (float32) or 'bf16' (raw .bin)

    def __post_init__(self):
        # Tuples, so that options given as lists still compare and hash (export caches).
        object.__setattr__(self, 'image_size', tuple(self.image_size))
        object.__setattr__(self, 'histories', tuple(self.histories))
        if self.embeddings not in files.EMBEDDING_KINDS:
            raise ValueError(
                f'embeddings {self.embeddings!r} is not one of {files.EMBEDDING_KINDS}')


def vision_file(height: int, width: int) -> str:
    """File name of the vision model for H x W images."""
    return f'qwen2_5_vl_vision_{height}x{width}.onnx'


def layer_file(prefill_len: int, layer: int, group: int) -> str:
    """File name of shape group `group` of decoder layer `layer` in a build of prefill length P."""
    return f'qwen2_5_vl_p{prefill_len}_l{layer}_together_g{group}.onnx'


def layer_weights_file(prefill_len: int, layer: int) -> str:
    """File name of the weights all shape groups of decoder layer `layer` reference."""
    return f'qwen2_5_vl_p{prefill_len}_l{layer}_together.weights'


POST_FILE = 'qwen2_5_vl_post.onnx'


def export_checkpoint(hf_dir, out_dir, options: ExportOptions = ExportOptions(),
                      log=print) -> Path:
    """Write every model and file of the stand-in directory `out_dir`; returns its path."""
    hf_dir, out = Path(hf_dir), Path(out_dir)
    start = time.perf_counter()
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir, attn_implementation='eager')
    # Loaded weights may be bf16 (the real checkpoint): the stand-ins compute in float32.
    model = model.float().eval()
    log(f'loaded {hf_dir} in {time.perf_counter() - start:.1f} s')
    # Check every option against the config before writing anything.
    grid = _vision_grid(model.config.vision_config, options.image_size)
    groups = _layer_groups(text_config(model), options)
    preprocessor = hf_dir / 'preprocessor_config.json'
    if not preprocessor.is_file():
        raise FileNotFoundError(f'{hf_dir} lacks preprocessor_config.json (image mean/std)')
    pre = json.loads(preprocessor.read_text())

    out.mkdir(parents=True, exist_ok=True)
    _export_vision(model, out, options.image_size, grid, pre['image_mean'], pre['image_std'])
    _export_layers(model, out, options.prefill_len, groups)
    export_graph(PostStandIn(model.model.language_model.norm, model.lm_head),
                 (torch.zeros(1, 1, text_config(model).hidden_size),), out / POST_FILE,
                 ('input',), ('output',))
    table = model.get_input_embeddings().weight.detach().numpy()
    files.write_embeddings(table, out, options.embeddings)
    files.copy_hf_files(hf_dir, out)
    log(f'exported {out} in {time.perf_counter() - start:.1f} s')
    return out


def text_config(model):
    """Return the language model's config (nested in transformers >= 4.52, top-level before)."""
    return getattr(model.config, 'text_config', model.config)


def _vision_grid(vision_config, image_size: tuple[int, int]) -> tuple[int, int]:
    """Patch grid (gh, gw) of an image size; sides must be whole merged patches (28 px)."""
    unit = vision_config.patch_size * vision_config.spatial_merge_size
    height, width = image_size
    if height % unit or width % unit or height <= 0 or width <= 0:
        raise ValueError(f'image size {height}x{width} must be positive multiples of {unit}')
    return height // vision_config.patch_size, width // vision_config.patch_size


def _layer_groups(cfg, options: ExportOptions) -> list[LayerGroup]:
    head_dim = getattr(cfg, 'head_dim', None) or cfg.hidden_size // cfg.num_attention_heads
    if 2 * sum(mrope_section(cfg)) != head_dim:
        raise ValueError(f'mrope_section {mrope_section(cfg)} does not cover head_dim {head_dim}')
    return layer_groups(cfg.hidden_size, head_dim * cfg.num_key_value_heads,
                        options.prefill_len, options.kv_len, options.histories)


def _export_vision(model, out: Path, image_size: tuple[int, int], grid: tuple[int, int],
                   image_mean: list[float], image_std: list[float]) -> None:
    vcfg = model.config.vision_config
    wrapper = VisionStandIn(model.model.visual, *grid, image_mean, image_std)
    example = example_input(*grid, vcfg.temporal_patch_size, vcfg.patch_size)
    export_graph(wrapper.eval(), (example,), out / vision_file(*image_size),
                 (INPUT_NAME,), (OUTPUT_NAME,))


def _export_layers(model, out: Path, prefill_len: int, groups: list[LayerGroup]) -> None:
    cfg = text_config(model)
    rotary = model.model.language_model.rotary_emb
    # Positions never exceed the token count for text and images; video temporal ids can run
    # ahead of it (group * seconds * tokens_per_second), so the tables get twice the room.
    rope = RopeTables(rotary.inv_freq, rotary.attention_scaling, 2 * max_context(groups))
    # The groups of a layer are graphs over the same weights (and rope tables): one file holds
    # them, each tensor once, and every group's .onnx references it.
    for i, layer in enumerate(model.model.language_model.layers):
        with SharedWeights(out / layer_weights_file(prefill_len, i)) as weights:
            for group in groups:
                wrapper = DecoderLayerStandIn(layer, cfg, rope, group).eval()
                graph = trace_graph(wrapper, example_inputs(group), LAYER_INPUTS,
                                    LAYER_OUTPUTS, uint32_inputs=('indices',), scratch_dir=out)
                weights.save(graph, out / layer_file(prefill_len, i, group.index))
