r"""Pack ONNX stand-ins into the .axmodel files the stub NPU (test/npu_stub) loads.

A real .axmodel holds every shape group of a model in one file. The ONNX stand-in layout has one
file per group (``*_g{g}.onnx``), so one stub .axmodel is a small container of them:

    b'AXEMU\\x01\\n' | uint64 LE header length | JSON header | the ONNX files, concatenated

    header = {"groups": [{"onnx": [offset, length],
                          "inputs":  [{"name", "shape", "dtype"}, ...],
                          "outputs": [{"name", "shape", "dtype"}, ...]}, ...]}   # group g at [g]

The tensors list what the compiled model declares, in graph order: every float tensor is
declared ``bfloat16`` (the NPU's I/O type) except those named in ``keep_float32`` (the vision
encoder's output is float32 on the board); integer tensors keep their ONNX type. The stub NPU
(npu_host.py) converts at its boundary (bf16 <-> the graph's float32).

``pack_model_dir(onnx_dir, out_dir)`` (scripts/pack_npu_stub.py) turns a whole stand-in directory
into the axmodel layout:
vision, post and one container per decoder layer; every other file (configs, tokenizer,
embedding table) is symlinked, not copied. External data (the ``*_together.weights`` file the
groups of a layer share, a ``.onnx.data``) is read back into each graph when packed, so a
container is self-contained (one copy of the weights per group) as long as each graph stays
under protobuf's 2 GB.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

MAGIC = b'AXEMU\x01\n'
VISION_FLOAT32_OUTPUTS = ('hidden_states_out',)
# External data files of the stand-ins, packed into the containers instead of linked.
_WEIGHTS_SUFFIXES = ('.onnx.data', '.weights')
_PROTOBUF_LIMIT = 1 << 31
_LAYER = re.compile(r'^(.*_l\d+_together)_g(\d+)\.onnx$')
_ONNX_TYPES = {1: 'float32', 2: 'uint8', 3: 'int8', 4: 'uint16', 5: 'int16', 6: 'int32',
               12: 'uint32', 16: 'bfloat16'}


def _tensors(values, keep_float32, float_io='bfloat16') -> list:
    out = []
    for v in values:
        t = v.type.tensor_type
        dtype = _ONNX_TYPES[t.elem_type]
        if dtype == 'float32' and v.name not in keep_float32:
            dtype = float_io
        out.append({'name': v.name, 'shape': [d.dim_value for d in t.shape.dim],
                    'dtype': dtype})
    return out


def pack(onnx_files: list, out_path, keep_float32=(), float_io='bfloat16') -> Path:
    """Write one stub .axmodel holding ``onnx_files`` as shape groups 0, 1, ..."""
    import onnx
    groups, blobs, offset = [], [], 0
    for path in onnx_files:
        # With its external data (a layer's shared .weights, a big model's .onnx.data) read
        # back in: a container holds self-contained graphs, each group its own copy.
        model = onnx.load(str(path), load_external_data=True)
        if model.ByteSize() >= _PROTOBUF_LIMIT:
            raise ValueError(f'{path}: over 2 GB with its weights, cannot be packed inline')
        data = model.SerializeToString()
        groups.append({'onnx': [offset, len(data)],
                       'inputs': _tensors(model.graph.input, keep_float32, float_io),
                       'outputs': _tensors(model.graph.output, keep_float32, float_io)})
        blobs.append(data)
        offset += len(data)
    header = json.dumps({'groups': groups}).encode()
    out_path = Path(out_path)
    with open(out_path, 'wb') as f:
        f.write(MAGIC + struct.pack('<Q', len(header)) + header)
        for blob in blobs:
            f.write(blob)
    return out_path


def pack_model_dir(onnx_dir, out_dir, float_io='bfloat16') -> Path:
    """ONNX stand-in directory -> stub axmodel directory (containers + symlinks).

    ``float_io``: the declared type of float tensors, 'bfloat16' as compiled for the board, or
    'float32' (then the pipeline computes exactly what onnxruntime does: token parity tests).
    """
    src, out = Path(onnx_dir).resolve(), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layers: dict[str, dict[int, Path]] = {}
    for p in sorted(src.iterdir()):
        m = _LAYER.match(p.name)
        if m:
            layers.setdefault(m.group(1), {})[int(m.group(2))] = p
        elif p.suffix == '.onnx':
            keep = VISION_FLOAT32_OUTPUTS if 'vision' in p.name else ()
            pack([p], out / (p.stem + '.axmodel'), keep, float_io)
        elif not p.name.endswith(_WEIGHTS_SUFFIXES):
            link = out / p.name
            if not link.exists():
                os.symlink(p, link)
    for stem, groups in layers.items():
        if sorted(groups) != list(range(len(groups))):
            raise ValueError(f'{stem}: shape groups {sorted(groups)} are not 0..n-1')
        pack([groups[g] for g in sorted(groups)], out / f'{stem}.axmodel', float_io=float_io)
    return out


def numpy_dtype(name: str):
    """Return the numpy dtype of a container or ONNX type name ('bfloat16', 'float', ...)."""
    import ml_dtypes
    import numpy as np
    name = {'float': 'float32', 'double': 'float64', 'float16': 'float16'}.get(name, name)
    return np.dtype(ml_dtypes.bfloat16) if name == 'bfloat16' else np.dtype(name)


def read_container(data) -> list:
    """Split a container written by ``pack``: [(onnx bytes, group header), ...].

    Raises ValueError if ``data`` is not one.
    """
    data = memoryview(data).cast('B')
    if bytes(data[:len(MAGIC)]) != MAGIC:
        raise ValueError('not a stub .axmodel (bad magic): pack it with scripts/pack_npu_stub.py')
    (hlen,) = struct.unpack_from('<Q', data, len(MAGIC))
    start = len(MAGIC) + 8
    header = json.loads(bytes(data[start:start + hlen]))
    base = start + hlen
    return [(bytes(data[base + g['onnx'][0]:base + g['onnx'][0] + g['onnx'][1]]), g)
            for g in header['groups']]
