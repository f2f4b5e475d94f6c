"""onnxruntime backend: the stand-in models written by qwen-vl-export, one file per shape group.

onnxruntime reads a C-contiguous numpy input of the declared dtype in place (it wraps the
buffer in an OrtValue without copying), so feeding a whole KV cache costs no copy per token.

Weights are held once. The shape groups of a decoder layer are separate graphs over one
external data file (export/graph_io.py: SharedWeights). Left to itself, every onnxruntime
session maps that file on its own and pre-packs its MatMul weights into a copy of its own
(measured at the real size: 24 GB at layer 27 of 36, then the OOM killer). Here every external
initializer is a view of one read-only memory map of its file, handed to each session with
`SessionOptions.add_initializer`, and pre-packing is off for those sessions: onnxruntime packs
shared initializers too, which would put one copy per group back (measured: two groups over a
64 MB weight, 140 MB resident with onnxruntime's defaults, 213 MB shared but packed, 85 MB
shared and unpacked). Without packing a one-row (decode) MatMul ran as fast or faster and a
64-row (prefill) one about 30 % slower on this machine. One graph with dynamic shapes for all
groups would also hold one copy, but it would change the exported layout (one file per group,
as the axmodels have) and give up the static shapes the groups are checked against.
"""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np

from ..errors import ModelDirError, RuntimeFailure
from .base import Runtime, Session, TensorSpec

ORT_DTYPES = {
    'tensor(float)': np.dtype(np.float32),
    'tensor(float16)': np.dtype(np.float16),
    'tensor(bfloat16)': np.dtype(ml_dtypes.bfloat16),
    'tensor(uint8)': np.dtype(np.uint8),
    'tensor(uint32)': np.dtype(np.uint32),
    'tensor(int32)': np.dtype(np.int32),
    'tensor(int64)': np.dtype(np.int64),
}


def _specs(args) -> list[TensorSpec]:
    return [TensorSpec(a.name, tuple(a.shape), ORT_DTYPES[a.type]) for a in args]


class OnnxSession(Session):
    """A model as one onnxruntime InferenceSession per shape group."""

    def __init__(self, paths: dict, providers, threads: int, weights: WeightMaps | None = None):
        import onnxruntime as ort
        self.path = paths[min(paths)]
        self._sessions = {}
        # The OrtValues of shared initializers do not own their bytes: keep the maps alive.
        self._weights = weights = weights if weights is not None else WeightMaps()
        for group, path in sorted(paths.items()):
            opts = ort.SessionOptions()
            if threads:
                opts.intra_op_num_threads = threads
            opts.log_severity_level = 3
            try:
                shared = weights.initializers(path)
                for name, value in shared:
                    opts.add_initializer(name, value)
                if shared:  # a packed copy per session would undo the sharing (see above)
                    opts.add_session_config_entry('session.disable_prepacking', '1')
                sess = ort.InferenceSession(path, sess_options=opts, providers=providers)
            except Exception as e:  # onnxruntime raises its own exception types
                raise ModelDirError(f'onnxruntime cannot load {path}: {e}') from e
            self._sessions[max(group, 0)] = (
                sess, _specs(sess.get_inputs()), _specs(sess.get_outputs()))
        self.groups = tuple(sorted(self._sessions))

    def inputs(self, group: int = 0) -> list[TensorSpec]:
        """Input specs of a shape group."""
        return self._sessions[group][1]

    def outputs(self, group: int = 0) -> list[TensorSpec]:
        """Output specs of a shape group."""
        return self._sessions[group][2]

    def run(self, feed: dict, group: int = 0) -> list[np.ndarray]:
        """Run a shape group; onnxruntime reads the inputs in place."""
        try:
            return self._sessions[group][0].run(None, feed)
        except Exception as e:
            raise RuntimeFailure(f'onnxruntime failed on {self.path} group {group}: {e}') from e


class OnnxRuntime(Runtime):
    """Opens ONNX models with configurable execution providers."""

    name = 'onnxruntime'

    def __init__(self, providers=None, threads: int = 0):
        self.providers = list(providers) if providers else ['CPUExecutionProvider']
        self.threads = threads
        self.weights = WeightMaps()  # one map per external data file, shared by all sessions
        self.where = ', '.join(self.providers)

    def open(self, paths: dict, role: str = '', files=None, kv_len: int = 0) -> Session:
        """Open one model (one file per shape group); shapes come from the files."""
        return OnnxSession(paths, self.providers, self.threads, self.weights)



class WeightMaps:
    """Read-only memory maps of ONNX external data files, and OrtValues viewing them.

    `initializers(path)` lists (name, OrtValue) for every initializer of the model at `path`
    whose bytes live in an external data file; equal (file, offset, length) ranges give the same
    OrtValue, so every session that shares a file shares its memory. The maps stay open as long
    as this object (the OrtValues do not own their bytes).
    """

    def __init__(self):
        self._maps: dict[Path, np.memmap] = {}
        self._values: dict[tuple, object] = {}

    def initializers(self, path) -> list[tuple[str, object]]:
        """(name, OrtValue) of the external initializers of the .onnx file `path`.

        Raises ModelDirError when the model or an external data range cannot be read.
        """
        import onnx
        from onnx.external_data_helper import ExternalDataInfo, uses_external_data
        from onnxruntime import OrtValue

        path = Path(path)
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # protobuf's DecodeError, OSError
            raise ModelDirError(f'cannot read {path}: {e}') from e
        found = []
        for tensor in model.graph.initializer:
            if not uses_external_data(tensor):
                continue
            info = ExternalDataInfo(tensor)
            data = (path.parent / info.location).resolve()
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
            shape = tuple(tensor.dims)
            key = (data, info.offset or 0, dtype.str, shape)
            if key not in self._values:
                self._values[key] = OrtValue.ortvalue_from_numpy(
                    self._view(data, info.offset or 0, info.length, dtype, shape))
            found.append((tensor.name, self._values[key]))
        return found

    def _view(self, data: Path, offset: int, length, dtype: np.dtype, shape: tuple):
        if data not in self._maps:
            try:
                self._maps[data] = np.memmap(data, dtype=np.uint8, mode='r')
            except (OSError, ValueError) as e:
                raise ModelDirError(f'cannot map the weights file {data}: {e}') from e
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = count * dtype.itemsize
        raw = self._maps[data][offset:offset + nbytes]
        if raw.size != nbytes or (length is not None and int(length) != nbytes):
            raise ModelDirError(f'{data}: {nbytes} bytes wanted at offset {offset}, '
                                f'{raw.size} there (declared length {length})')
        return raw.view(dtype).reshape(shape)
