"""torch.onnx export of one module to one file, with the graph signature fixed up afterwards.

The legacy (TorchScript) exporter cannot declare uint32 inputs and drops inputs the graph does not
use; the axmodel signature needs both (`indices` is uint32, group 1's dummy cache must be fed).
Graphs over protobuf's 2 GB limit (the real vision tower in float32) keep their weights in one
`<file>.data` beside the .onnx file.

The shape groups of one decoder layer are separate graphs over the same weights: `SharedWeights`
saves them with every initializer in one external data file that all of them reference, each
distinct tensor written once (docs/LAYOUT.md).
"""
import hashlib
import tempfile
import warnings
from pathlib import Path

import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
# Weights above this many bytes go to an external data file (protobuf's limit is 2 GiB).
MAX_INLINE_BYTES = 1 << 30
# Constant nodes with a tensor this large become initializers in a SharedWeights file (the rope
# tables); smaller ones (shapes, axes, scalars) stay in the graph.
SHARED_CONSTANT_BYTES = 1024
# Offsets in a SharedWeights file: tensors of 1 MiB or more start on a 64 KiB boundary, so that
# onnxruntime can memory-map them (its rule, on Linux and Windows alike); others on 64 bytes.
_BIG_TENSOR, _BIG_ALIGN, _ALIGN = 1 << 20, 1 << 16, 64
_DATA_FIELDS = ('raw_data', 'float_data', 'int32_data', 'string_data', 'int64_data',
                'double_data', 'uint64_data')


def export_graph(module: torch.nn.Module, args: tuple, path: Path,
                 input_names: tuple[str, ...], output_names: tuple[str, ...],
                 uint32_inputs: tuple[str, ...] = (),
                 max_inline_bytes: int = MAX_INLINE_BYTES) -> None:
    """Export `module(*args)` with static shapes; `uint32_inputs` are traced as int64."""
    path = Path(path)
    model = trace_graph(module, args, input_names, output_names, uint32_inputs, path.parent)
    save_graph(model, path, max_inline_bytes)


def save_graph(model: onnx.ModelProto, path: Path,
               max_inline_bytes: int = MAX_INLINE_BYTES) -> None:
    """Save `model` at `path`; weights over `max_inline_bytes` go to `<file>.data` beside it."""
    path = Path(path)
    external = _weight_bytes(model) > max_inline_bytes
    data = path.with_name(f'{path.name}.data')
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
              location=data.name)
    onnx.checker.check_model(str(path))  # by path: works for external data too


def trace_graph(module: torch.nn.Module, args: tuple, input_names: tuple[str, ...],
                output_names: tuple[str, ...], uint32_inputs: tuple[str, ...] = (),
                scratch_dir: Path | None = None) -> onnx.ModelProto:
    """Return the graph of `module(*args)` with its fixed-up signature, weights in memory."""
    # A large graph comes out of torch as one file per weight: let that happen in a scratch dir
    # (on the output's disk when given).
    with tempfile.TemporaryDirectory(dir=scratch_dir) as scratch:
        raw = Path(scratch) / 'graph.onnx'
        with torch.no_grad(), warnings.catch_warnings():
            # Tracing bakes grid-derived values in as constants: intended, the graphs are fixed.
            warnings.simplefilter('ignore', torch.jit.TracerWarning)
            # The legacy exporter is chosen on purpose (opset 17, no onnxscript).
            warnings.simplefilter('ignore', DeprecationWarning)
            torch.onnx.export(module, args, str(raw), input_names=list(input_names),
                              output_names=list(output_names), opset_version=OPSET,
                              dynamo=False, do_constant_folding=True)
        model = onnx.load(str(raw))  # with its external data, if any
    _restore_inputs(model, input_names, args)
    for name in uint32_inputs:
        _cast_input_from_uint32(model, name)
    return model


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


def _weight_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


def _restore_inputs(model: onnx.ModelProto, names: tuple[str, ...], args: tuple) -> None:
    """Put back inputs the exporter pruned, keeping the declared input order."""
    present = {vi.name: vi for vi in model.graph.input}
    inputs = []
    for name, arg in zip(names, args):
        if name in present:
            inputs.append(present[name])
        else:
            elem = helper.np_dtype_to_tensor_dtype(arg.numpy().dtype)
            inputs.append(helper.make_tensor_value_info(name, elem, list(arg.shape)))
    del model.graph.input[:]
    model.graph.input.extend(inputs)


def _cast_input_from_uint32(model: onnx.ModelProto, name: str) -> None:
    """Make input `name` uint32, cast to int64 (what Gather wants) by the graph's first node."""
    graph = model.graph
    (value_info,) = [vi for vi in graph.input if vi.name == name]
    value_info.type.tensor_type.elem_type = TensorProto.UINT32
    cast_name = f'{name}_int64'
    for node in graph.node:
        node.input[:] = [cast_name if i == name else i for i in node.input]
    graph.node.insert(0, helper.make_node('Cast', [name], [cast_name], to=TensorProto.INT64,
                                          name=f'{name}_to_int64'))
