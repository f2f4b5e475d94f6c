"""onnxruntime backend: the stand-in models written by qwen-vl-export, one file per shape group.

onnxruntime reads a C-contiguous numpy input of the declared dtype in place (it wraps the
buffer in an OrtValue without copying), so feeding a whole KV cache costs no copy per token.
"""

from __future__ import annotations

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

    def __init__(self, paths: dict, providers, threads: int):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        self.path = paths[min(paths)]
        self._sessions = {}
        for group, path in sorted(paths.items()):
            try:
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
        self.where = ', '.join(self.providers)

    def open(self, paths: dict, role: str = '', files=None, kv_len: int = 0) -> Session:
        """Open one model (one file per shape group); shapes come from the files."""
        return OnnxSession(paths, self.providers, self.threads)
