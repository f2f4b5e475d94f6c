"""torch.onnx export of one module to one file, with the graph signature fixed up afterwards.

The legacy (TorchScript) exporter cannot declare uint32 inputs and drops inputs the graph does not
use; the axmodel signature needs both (`indices` is uint32, group 1's dummy cache must be fed).
Graphs over protobuf's 2 GB limit (the real vision tower in float32) keep their weights in one
`<file>.data` beside the .onnx file.

The shape groups of one decoder layer are separate graphs over the same weights: `SharedWeights`
(shared_weights.py) saves them with every initializer in one external data file that all of them
reference, each distinct tensor written once (docs/LAYOUT.md).
"""
import tempfile
import warnings
from pathlib import Path

import onnx
import torch
from onnx import TensorProto, helper

from .shared_weights import SharedWeights  # noqa: F401  (re-exported: the exporter's one home)

OPSET = 17
# Weights above this many bytes go to an external data file (protobuf's limit is 2 GiB).
MAX_INLINE_BYTES = 1 << 30


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
