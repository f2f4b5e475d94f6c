"""Export a Hugging Face Qwen2.5-VL checkpoint to the ONNX stand-in directory (docs/LAYOUT.md)."""
import copy
import gc
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import files
from .checkpoint import decoder_layers, load_checkpoint, text_config, text_model, vision_tower
from .graph_io import SharedWeights, export_graph, save_graph, trace_graph
from .layer import DecoderLayerStandIn, RopeTables, example_inputs, mrope_section
from .post import PostStandIn
from .shapes import LAYER_INPUTS, LAYER_OUTPUTS, LayerGroup, layer_groups, max_context
from .vision import INPUT_NAME, OUTPUT_NAME, VisionStandIn, example_input

# Weights of the MatMuls (decoder layers, post model, vision tower): float32, or 8-bit blocks
# (onnxruntime's MatMulNBits, export/quantize.py). The embedding table stays float32 either way.
WEIGHT_KINDS = ('float32', 'int8')


@dataclass(frozen=True)
class ExportOptions:
    """What to build: image (or frame) size, prefill / chunk length, cache length, weights."""

    image_size: tuple[int, int] = (448, 448)   # (H, W)
    prefill_len: int = 320
    kv_len: int = 1023
    histories: tuple[int, ...] = ()           # chunk histories H_g of a chunked build
    embeddings: str = 'npy'                   # 'npy' (float32) or 'bf16' (raw .bin)
    weights: str = 'float32'                  # one of WEIGHT_KINDS

    def __post_init__(self):
        # Tuples, so that options given as lists still compare and hash (export caches).
        object.__setattr__(self, 'image_size', tuple(self.image_size))
        object.__setattr__(self, 'histories', tuple(self.histories))
        if self.embeddings not in files.EMBEDDING_KINDS:
            raise ValueError(
                f'embeddings {self.embeddings!r} is not one of {files.EMBEDDING_KINDS}')
        if self.weights not in WEIGHT_KINDS:
            raise ValueError(f'weights {self.weights!r} is not one of {WEIGHT_KINDS}')


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
    """Write every model and file of the stand-in directory `out_dir`; returns its path.

    Memory: the checkpoint stays in its own dtype (bf16 for the real 3B: 7.5 GB, not 15 GB of
    float32) and each module is converted to float32, traced, written and released in turn.
    Decoder layers leave the model once written, so the float32 vision tower (2.7 GB at full
    size) is traced last, beside a model that has shrunk to its vision and embedding weights.
    Raises CheckpointError (a ValueError) for a checkpoint with weights that would be random,
    ValueError for options the config cannot serve, FileNotFoundError for missing files.
    """
    hf_dir, out = Path(hf_dir), Path(out_dir)
    start = time.perf_counter()
    model = load_checkpoint(hf_dir)
    log(f'loaded {hf_dir} ({next(model.parameters()).dtype}) in '
        f'{time.perf_counter() - start:.1f} s')
    # Check every option against the config before writing anything.
    grid = _vision_grid(model.config.vision_config, options.image_size)
    cfg = text_config(model)
    groups = _layer_groups(cfg, options)
    preprocessor = hf_dir / 'preprocessor_config.json'
    if not preprocessor.is_file():
        raise FileNotFoundError(f'{hf_dir} lacks preprocessor_config.json (image mean/std)')
    pre = json.loads(preprocessor.read_text())
    quantize = _quantizer(options.weights)

    out.mkdir(parents=True, exist_ok=True)
    _export_layers(model, out, options.prefill_len, groups, quantize, log)
    post = PostStandIn(copy.deepcopy(text_model(model).norm).float(),
                       _float_linear(model.lm_head))
    graph = trace_graph(post, (torch.zeros(1, 1, cfg.hidden_size),), ('input',), ('output',),
                        scratch_dir=out)
    save_graph(quantize(graph), out / POST_FILE)
    del post, graph
    files.write_embeddings(model.get_input_embeddings().weight.detach().float().numpy(), out,
                           options.embeddings)
    _export_vision(model, out, options.image_size, grid, pre['image_mean'], pre['image_std'],
                   quantize if options.weights != 'float32' else None)
    files.copy_hf_files(hf_dir, out)
    log(f'exported {out} ({options.weights} weights) in {time.perf_counter() - start:.1f} s')
    return out


def _quantizer(weights: str):
    """Return graph -> graph: identity for float32, 8-bit MatMul weights for int8."""
    if weights == 'float32':
        return lambda graph: graph
    from .quantize import quantize_matmul_int8  # onnxruntime.quantization, only when asked
    return quantize_matmul_int8


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
                   image_mean: list[float], image_std: list[float], quantize=None) -> None:
    vcfg = model.config.vision_config
    visual = vision_tower(model).float()  # its last user: converted in place, not copied
    wrapper = VisionStandIn(visual, *grid, image_mean, image_std)
    example = example_input(*grid, vcfg.temporal_patch_size, vcfg.patch_size)
    path = out / vision_file(*image_size)
    if quantize is None:
        export_graph(wrapper.eval(), (example,), path, (INPUT_NAME,), (OUTPUT_NAME,))
        return
    graph = trace_graph(wrapper.eval(), (example,), (INPUT_NAME,), (OUTPUT_NAME,),
                        scratch_dir=out)
    visual.to('meta')  # the graph holds the weights now: the tower's own copy goes
    gc.collect()
    # External data even when small enough to inline: the runtime maps it and hands its pages
    # back after each image (runtime/onnx.py); inline bytes would stay in onnxruntime's memory.
    save_graph(quantize(graph), path, max_inline_bytes=0)


def _export_layers(model, out: Path, prefill_len: int, groups: list[LayerGroup],
                   quantize, log) -> None:
    cfg = text_config(model)
    rotary = text_model(model).rotary_emb
    # Positions never exceed the token count for text and images; video temporal ids can run
    # ahead of it (group * seconds * tokens_per_second), so the tables get twice the room.
    rope = RopeTables(rotary.inv_freq, rotary.attention_scaling, 2 * max_context(groups))
    layers = decoder_layers(model)
    for i in range(len(layers)):
        # One float32 layer at a time; the checkpoint's own copy leaves the model right away.
        layer = copy.deepcopy(layers[i]).float().eval()
        layers[i] = torch.nn.Identity()
        # The groups of a layer are graphs over the same weights (and rope tables): one file
        # holds them, each tensor once, and every group's .onnx references it.
        with SharedWeights(out / layer_weights_file(prefill_len, i)) as weights:
            for group in groups:
                wrapper = DecoderLayerStandIn(layer, cfg, rope, group).eval()
                graph = trace_graph(wrapper, example_inputs(group), LAYER_INPUTS,
                                    LAYER_OUTPUTS, uint32_inputs=('indices',), scratch_dir=out)
                weights.save(quantize(graph), out / layer_file(prefill_len, i, group.index))
                del wrapper, graph
        del layer
        gc.collect()
        log(f'layer {i + 1}/{len(layers)} written')


def _float_linear(linear: torch.nn.Linear) -> torch.nn.Linear:
    """Return a float32 copy of `linear` (lm_head may share the embedding table)."""
    copied = torch.nn.Linear(linear.in_features, linear.out_features,
                             bias=linear.bias is not None)
    with torch.no_grad():
        copied.weight.copy_(linear.weight.float())
        if linear.bias is not None:
            copied.bias.copy_(linear.bias.float())
    return copied.eval()
