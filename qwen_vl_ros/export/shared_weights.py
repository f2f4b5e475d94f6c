"""One external data file shared by the shape groups of a layer (written once, mapped once).

No torch here: the runtime's tests build such files by hand (test_onnx_shared_weights.py).
"""
import hashlib
from pathlib import Path

import onnx
from onnx import TensorProto, numpy_helper

# Constant nodes with a tensor this large become initializers in a SharedWeights file (the rope
# tables); smaller ones (shapes, axes, scalars) stay in the graph.
SHARED_CONSTANT_BYTES = 1024
# Offsets in a SharedWeights file: tensors of 1 MiB or more start on a 64 KiB boundary, so that
# onnxruntime can memory-map them (its rule, on Linux and Windows alike); others on 64 bytes.
_BIG_TENSOR, _BIG_ALIGN, _ALIGN = 1 << 20, 1 << 16, 64
_DATA_FIELDS = ('raw_data', 'float_data', 'int32_data', 'string_data', 'int64_data',
                'double_data', 'uint64_data')



class SharedWeights:
    """One external data file shared by several ONNX models saved beside it.

    `save(model, path)` moves every initializer of `model` (and every Constant node tensor of
    at least SHARED_CONSTANT_BYTES, made an initializer first) into the file, writing bytes
    only the first time they are seen: models that hold the same tensors reference the same
    offsets. The .onnx files keep the graphs and `location`/`offset`/`length` entries, which
    onnxruntime resolves relative to the model file's directory.

        with SharedWeights(out / 'layer.weights') as weights:
            for path, model in graphs:
                weights.save(model, path)
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = open(self.path, 'wb')
        self._offsets: dict[bytes, int] = {}   # sha256 of the bytes -> offset
        self._end = 0

    def __enter__(self) -> 'SharedWeights':
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the data file (the models saved so far are complete)."""
        self._file.close()

    def save(self, model: onnx.ModelProto, path: Path) -> None:
        """Save `model` at `path` (beside the data file) with its tensors in the data file."""
        path = Path(path)
        if path.parent.resolve() != self.path.parent.resolve():
            raise ValueError(f'{path} is not in the directory of its weights {self.path}')
        _constants_to_initializers(model.graph, SHARED_CONSTANT_BYTES)
        for tensor in model.graph.initializer:
            self._externalize(tensor)
        self._file.flush()
        path.write_bytes(model.SerializeToString())
        onnx.checker.check_model(str(path))  # by path: checks the data file's entries too

    def _externalize(self, tensor: TensorProto) -> None:
        if tensor.data_location == TensorProto.EXTERNAL:
            raise ValueError(f'initializer {tensor.name} already has external data')
        if tensor.data_type == TensorProto.STRING:
            raise ValueError(f'initializer {tensor.name}: string tensors have no raw bytes')
        data = (tensor.raw_data if tensor.HasField('raw_data')
                else numpy_helper.to_array(tensor).tobytes())
        digest = hashlib.sha256(data).digest()
        if digest not in self._offsets:
            align = _BIG_ALIGN if len(data) >= _BIG_TENSOR else _ALIGN
            pad = -self._end % align
            self._file.write(bytes(pad) + data)
            self._offsets[digest] = self._end + pad
            self._end += pad + len(data)
        for field in _DATA_FIELDS:
            tensor.ClearField(field)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (('location', self.path.name), ('offset', self._offsets[digest]),
                           ('length', len(data))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)


def _constants_to_initializers(graph: onnx.GraphProto, min_bytes: int) -> None:
    """Replace Constant nodes holding a tensor of >= min_bytes by initializers of that name."""
    keep = []
    for node in graph.node:
        value = [a for a in node.attribute if a.name == 'value' and a.type == a.TENSOR]
        if node.op_type == 'Constant' and node.domain in ('', 'ai.onnx') and value:
            tensor = value[0].t
            size = numpy_helper.to_array(tensor).nbytes
            if size >= min_bytes:
                init = graph.initializer.add()
                init.CopyFrom(tensor)
                init.name = node.output[0]
                continue
        keep.append(node)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)
