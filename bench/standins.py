"""Real-shape stand-in model directories with next to no compute, for the host-side benchmarks.

    python bench/standins.py OUT_DIR [--tables npy,bf16]

Writes, with onnx.helper (no torch), every model of Qwen2.5-VL-3B at its real signature
(CONTRACT.md; sizes from ../shared/qwen2_5_vl_3b/config.json: 36 layers, hidden 2048, kv_dim 256,
vocab 151936; prefill 320, KV length 1023, vision 448x448):

- ``OUT/onnx``: the ONNX stand-in layout (docs/LAYOUT.md) with the 151936 x 2048 float32 table
  (1.2 GB), the real config, tokenizer and chat template;
- ``OUT/onnx_bf16``: the same models (symlinks) with the raw bf16 table (0.6 GB) instead;
- ``OUT/axmodel``: the stub-NPU axmodel layout of ``OUT/onnx`` (scripts/pack_npu_stub.py);
- ``OUT/onnx_chunked``: a chunked-prefill build (chunk 128, histories 128..512, as AXERA's
  chunk_prefill_512) with the other files of ``OUT/onnx`` linked.

The graphs only move data: a layer's ``output`` is its ``input``, ``K_cache_out`` /
``V_cache_out`` are slices of it; the vision output is a slice of the patch bytes; the post
model tiles the hidden row over the vocabulary (plus a tiny ramp). So a run costs the host side
and next to nothing else, and greedy decoding picks a varied token chain (ids below 2048, never
an end-of-sequence id).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import NPU_STUB, REAL_CONFIG  # noqa: E402

from qwen_vl_ros.export.shapes import LAYER_INPUTS, LAYER_OUTPUTS, layer_groups  # noqa: E402

PREFILL, KV_LEN, IMAGE = 320, 1023, (448, 448)
OPSET = 17
F32, U8, U32, I64 = TensorProto.FLOAT, TensorProto.UINT8, TensorProto.UINT32, TensorProto.INT64


def _const(name, values):
    return helper.make_node('Constant', [], [name], value=helper.make_tensor(
        name, I64, [len(values)], list(values)))


def _save(graph, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', OPSET)],
                              producer_name='qwen_vl_ros bench')
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def layer_graph(group, path: Path) -> None:
    """One shape group of a decoder layer: outputs are the input and slices of it."""
    ins = [helper.make_tensor_value_info(n, U32 if n == 'indices' else F32, list(s))
           for n, s in group.input_shapes.items()]
    outs = [helper.make_tensor_value_info(n, F32, list(s))
            for n, s in group.output_shapes.items()]
    kv = group.kv_dim
    nodes = [_const('axis', [2]), _const('k0', [0]), _const('k1', [kv]), _const('v1', [2 * kv]),
             helper.make_node('Slice', ['input', 'k0', 'k1', 'axis'], ['K_cache_out']),
             helper.make_node('Slice', ['input', 'k1', 'v1', 'axis'], ['V_cache_out']),
             helper.make_node('Identity', ['input'], ['output'])]
    _save(helper.make_graph(nodes, f'layer_g{group.index}', ins, outs), path)


def vision_graph(seq: int, hidden: int, path: Path) -> None:
    """uint8 (1, seq, 392, 3) -> float32 (seq/4, hidden): the first bytes, as floats."""
    n = seq // 4 * hidden
    ins = [helper.make_tensor_value_info('hidden_states', U8, [1, seq, 392, 3])]
    outs = [helper.make_tensor_value_info('hidden_states_out', F32, [seq // 4, hidden])]
    nodes = [_const('flat', [-1]), _const('s0', [0]), _const('s1', [n]),
             _const('shape', [seq // 4, hidden]),
             helper.make_node('Reshape', ['hidden_states', 'flat'], ['x']),
             helper.make_node('Slice', ['x', 's0', 's1'], ['y']),
             helper.make_node('Cast', ['y'], ['z'], to=F32),
             helper.make_node('Reshape', ['z', 'shape'], ['hidden_states_out'])]
    _save(helper.make_graph(nodes, 'vision', ins, outs), path)


def post_graph(hidden: int, vocab: int, path: Path) -> None:
    """(1, 1, hidden) -> (1, 1, vocab): the row tiled over the vocabulary plus a small ramp.

    Distinct values like real logits (a run of zeros would make the demo's argpartition take
    its slow path), and the argmax lies in the first copy of the row: token ids below hidden.
    """
    reps = -(-vocab // hidden)
    ramp = (-1e-4 * np.arange(vocab, dtype=np.float32) / vocab).reshape(1, 1, vocab)
    ins = [helper.make_tensor_value_info('input', F32, [1, 1, hidden])]
    outs = [helper.make_tensor_value_info('output', F32, [1, 1, vocab])]
    nodes = [_const('reps', [1, 1, reps]), _const('s0', [0]), _const('s1', [vocab]),
             _const('axis', [2]),
             helper.make_node('Tile', ['input', 'reps'], ['tiled']),
             helper.make_node('Slice', ['tiled', 's0', 's1', 'axis'], ['cut']),
             helper.make_node('Add', ['cut', 'ramp'], ['output'])]
    graph = helper.make_graph(nodes, 'post', ins, outs,
                              initializer=[onnx.numpy_helper.from_array(ramp, 'ramp')])
    _save(graph, path)


def write_npy_table(path: Path, vocab: int, hidden: int, rows: int = 8192) -> None:
    """Write a real file of random float32 rows (not sparse), in blocks."""
    table = np.lib.format.open_memmap(path, mode='w+', dtype=np.float32, shape=(vocab, hidden))
    rng = np.random.default_rng(0)
    for r in range(0, vocab, rows):
        n = min(rows, vocab - r)
        table[r:r + n] = rng.standard_normal((n, hidden), np.float32) * 0.02
    table.flush()
    del table


def write_bf16_table(src_npy: Path, path: Path, rows: int = 8192) -> None:
    """Write the same table as raw bf16 rows (the released layout)."""
    import ml_dtypes
    table = np.load(src_npy, mmap_mode='r')
    with open(path, 'wb') as f:
        for r in range(0, table.shape[0], rows):
            np.ascontiguousarray(table[r:r + rows].astype(ml_dtypes.bfloat16)).tofile(f)


def write_config_without_shared(out: Path) -> None:
    """Qwen2.5-VL-3B's sizes with the tests' small Qwen-style tokenizer (no ../shared needed).

    The special tokens get the tokenizer's ids (config and tokenizer must agree); the prompt
    comes out about as long as with the real tokenizer.
    """
    from qwen_vl_ros.export import tiny
    from qwen_vl_ros.export.tokenizer import QWEN2_5_VL_CHAT_TEMPLATE, build_tokenizer
    tokenizer = build_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in tokenizer.all_special_tokens}
    cfg = tiny.tiny_config(ids, vocab_size=151936)
    cfg.update(hidden_size=2048, intermediate_size=11008, num_attention_heads=16,
               num_hidden_layers=36, num_key_value_heads=2, torch_dtype='bfloat16',
               rope_scaling={'type': 'mrope', 'mrope_section': [16, 24, 24]})
    cfg['vision_config'].update(out_hidden_size=2048, hidden_size=1280, depth=32)
    tokenizer.save_pretrained(out)
    for name, data in (('config.json', cfg), ('generation_config.json',
                                              tiny.generation_config(ids)),
                       ('preprocessor_config.json', tiny.PREPROCESSOR_CONFIG),
                       ('chat_template.json', {'chat_template': QWEN2_5_VL_CHAT_TEMPLATE})):
        (out / name).write_text(json.dumps(data, indent=2) + '\n')


CHUNK, HISTORIES = 128, (128, 256, 384, 512)   # AXERA's chunk_prefill_512 build


def build_chunked(onnx_dir: Path, out: Path, chunk: int = CHUNK,
                  histories: tuple = HISTORIES) -> Path:
    """Write a chunked-prefill build (p128, histories 128..512) beside ``onnx_dir``.

    Only the decoder layers differ: every other file of ``onnx_dir`` is linked.
    """
    out.mkdir(parents=True, exist_ok=True)
    for p in onnx_dir.iterdir():
        if '_together_' not in p.name and not (out / p.name).exists():
            os.symlink(p, out / p.name)
    cfg = json.loads((onnx_dir / 'config.json').read_text())
    text = dict(cfg, **(cfg.get('text_config') or {}))
    hidden = text['hidden_size']
    kv_dim = hidden // text['num_attention_heads'] * text['num_key_value_heads']
    groups = layer_groups(hidden, kv_dim, chunk, KV_LEN, histories)
    for g in groups:
        layer_graph(g, out / f'qwen2_5_vl_p{chunk}_l0_together_g{g.index}.onnx')
    for i in range(1, text['num_hidden_layers']):
        for g in groups:
            shutil.copyfile(out / f'qwen2_5_vl_p{chunk}_l0_together_g{g.index}.onnx',
                            out / f'qwen2_5_vl_p{chunk}_l{i}_together_g{g.index}.onnx')
    return out


def build(out: Path, tables=('npy', 'bf16'), axmodel: bool = True, log=print) -> dict:
    """Write the stand-in directories; return their paths."""
    onnx_dir = out / 'onnx'
    onnx_dir.mkdir(parents=True, exist_ok=True)
    if (REAL_CONFIG / 'config.json').is_file():
        for name in os.listdir(REAL_CONFIG):
            shutil.copyfile(REAL_CONFIG / name, onnx_dir / name)
    else:
        log(f'{REAL_CONFIG} is absent: real sizes with the tiny test tokenizer instead')
        write_config_without_shared(onnx_dir)
    cfg = json.loads((onnx_dir / 'config.json').read_text())
    text = dict(cfg, **(cfg.get('text_config') or {}))
    hidden, layers, vocab = text['hidden_size'], text['num_hidden_layers'], text['vocab_size']
    kv_dim = hidden // text['num_attention_heads'] * text['num_key_value_heads']
    seq = (IMAGE[0] // 14) * (IMAGE[1] // 14)
    vision_graph(seq, hidden, onnx_dir / f'qwen2_5_vl_vision_{IMAGE[0]}x{IMAGE[1]}.onnx')
    post_graph(hidden, vocab, onnx_dir / 'qwen2_5_vl_post.onnx')
    groups = layer_groups(hidden, kv_dim, PREFILL, KV_LEN)
    assert tuple(groups[0].input_shapes) == LAYER_INPUTS
    assert tuple(groups[0].output_shapes) == LAYER_OUTPUTS
    for g in groups:
        layer_graph(g, onnx_dir / f'qwen2_5_vl_p{PREFILL}_l0_together_g{g.index}.onnx')
    for i in range(1, layers):
        for g in groups:
            shutil.copyfile(onnx_dir / f'qwen2_5_vl_p{PREFILL}_l0_together_g{g.index}.onnx',
                            onnx_dir / f'qwen2_5_vl_p{PREFILL}_l{i}_together_g{g.index}.onnx')
    npy = onnx_dir / 'model.embed_tokens.weight.npy'
    log(f'writing the {vocab}x{hidden} float32 table ({vocab * hidden * 4 / 2**30:.2f} GiB)')
    write_npy_table(npy, vocab, hidden)
    dirs = {'onnx': onnx_dir, 'hidden': hidden, 'layers': layers, 'vocab': vocab,
            'kv_dim': kv_dim, 'chunked': build_chunked(onnx_dir, out / 'onnx_chunked')}
    if 'bf16' in tables:
        bf16_dir = out / 'onnx_bf16'
        bf16_dir.mkdir(exist_ok=True)
        for p in onnx_dir.iterdir():
            if p.name != npy.name:
                os.symlink(p, bf16_dir / p.name)
        log('writing the raw bf16 table')
        write_bf16_table(npy, bf16_dir / 'model.embed_tokens.weight.bfloat16.bin')
        dirs['onnx_bf16'] = bf16_dir
    if axmodel:
        sys.path.insert(0, str(NPU_STUB / 'python'))
        from axmodel_pack import pack_model_dir
        dirs['axmodel'] = pack_model_dir(onnx_dir, out / 'axmodel')
    return dirs


def main(argv=None) -> int:
    """Command line: write the stand-in directories into OUT_DIR."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('out')
    p.add_argument('--tables', default='npy,bf16')
    args = p.parse_args(argv)
    dirs = build(Path(args.out), tuple(args.tables.split(',')))
    print(json.dumps({k: str(v) for k, v in dirs.items()}, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
