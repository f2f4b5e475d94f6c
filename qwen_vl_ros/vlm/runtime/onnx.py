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

import mmap
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

    def __init__(self, paths: dict, providers, threads: int, weights: WeightMaps | None = None,
                 role: str = ''):
        import onnxruntime as ort
        self.path = paths[min(paths)]
        self._sessions = {}
        self._paths = {}
        # The OrtValues of shared initializers do not own their bytes: keep the maps alive.
        self._weights = weights = weights if weights is not None else WeightMaps()
        graphs = {group: weights.graph(path) for group, path in paths.items()}
        # 8-bit MatMulNBits is only fast pre-packed (export/quantize.py): the decode group
        # (CONTRACT.md: group 0; the post model's only group) keeps the one packed copy,
        # loaded by onnxruntime itself, which drops the file's bytes once packed. The vision
        # tower runs once per image: unpacked (float activations), its pages handed back.
        own = {g for g, graph in graphs.items()
               if g <= 0 and role != 'vision' and _quantized(graph)}
        # Pages of weights only a prefill group (next to a packed decode copy) or the vision
        # tower (once per image) reads are handed back to the page cache after each run, so
        # they do not sit in this process between requests.
        self._transient = {g for g in graphs if g not in own and (own or role == 'vision')}
        for group, path in sorted(paths.items()):
            opts = ort.SessionOptions()
            if threads:
                opts.intra_op_num_threads = threads
            opts.log_severity_level = 3
            # Every session has its own intra-op pool, and by default its threads spin for a
            # while after each run, taking the cores from the next layer's session (measured at
            # full size: 30 ms per int8 layer in the pipeline, 6 ms alone).
            opts.add_session_config_entry('session.intra_op.allow_spinning', '0')
            # One arena for all sessions: each session's own arena keeps the peak of its last
            # runs, and 36 prefill groups' peaks add up (full size, int8: +3.2 GB after the
            # first request, +5.2 GB after four; one shared arena: +0.45 GB, steady).
            _register_shared_arena(ort)
            opts.add_session_config_entry('session.use_env_allocators', '1')
            try:
                shared = [] if group in own else weights.initializers(path, graphs[group])
                for name, value in shared:
                    opts.add_initializer(name, value)
                if shared:  # a packed copy per session would undo the sharing (see above)
                    opts.add_session_config_entry('session.disable_prepacking', '1')
                sess = ort.InferenceSession(path, sess_options=opts, providers=providers)
            except Exception as e:  # onnxruntime raises its own exception types
                raise ModelDirError(f'onnxruntime cannot load {path}: {e}') from e
            self._sessions[max(group, 0)] = (
                sess, _specs(sess.get_inputs()), _specs(sess.get_outputs()))
            self._paths[max(group, 0)] = path
        self._transient = {max(g, 0) for g in self._transient}
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
        finally:
            if group in self._transient:
                self._weights.release(self._paths[group])


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
        return OnnxSession(paths, self.providers, self.threads, self.weights, role)


_SHARED_ARENA = []


def _register_shared_arena(ort) -> None:
    """Register one CPU arena allocator with onnxruntime's environment, once per process.

    Sessions with 'session.use_env_allocators' = '1' allocate from it (onnxruntime's
    create_and_register_allocator; OrtArenaCfg(0, -1, -1, -1) = no limit, default extend
    strategy and chunk sizes).
    """
    if not _SHARED_ARENA:
        info = ort.OrtMemoryInfo('Cpu', ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                                 ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
        _SHARED_ARENA.append(info)


def _quantized(graph) -> bool:
    """Tell whether the graph holds 8-bit MatMulNBits weights (qwen-vl-export --weights int8)."""
    return any(node.op_type == 'MatMulNBits' for node in graph.graph.node)



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
        self._files: dict[Path, set] = {}  # model path -> external data files it views

    @staticmethod
    def graph(path):
        """Read the onnx.ModelProto at `path` without its external data (raises ModelDirError)."""
        import onnx
        try:
            return onnx.load(str(path), load_external_data=False)
        except Exception as e:  # protobuf's DecodeError, OSError
            raise ModelDirError(f'cannot read {path}: {e}') from e

    def initializers(self, path, model=None) -> list[tuple[str, object]]:
        """(name, OrtValue) of the external initializers of the .onnx file `path`.

        `model` is that file's graph when the caller has read it already. Raises ModelDirError
        when the model or an external data range cannot be read.
        """
        import onnx
        from onnx.external_data_helper import ExternalDataInfo, uses_external_data
        from onnxruntime import OrtValue

        path = Path(path)
        model = model if model is not None else self.graph(path)
        files = self._files.setdefault(path, set())
        found = []
        for tensor in model.graph.initializer:
            if not uses_external_data(tensor):
                continue
            info = ExternalDataInfo(tensor)
            data = (path.parent / info.location).resolve()
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
            shape = tuple(tensor.dims)
            files.add(data)
            key = (data, info.offset or 0, dtype.str, shape)
            if key not in self._values:
                self._values[key] = OrtValue.ortvalue_from_numpy(
                    self._view(data, info.offset or 0, info.length, dtype, shape))
            found.append((tensor.name, self._values[key]))
        return found

    def release(self, path) -> None:
        """Drop this process's pages of the files the model at `path` views (madvise DONTNEED).

        The maps stay valid: the next read faults the bytes back in from the page cache (or the
        disk, if the kernel needed the memory meanwhile). A no-op where madvise is missing.
        """
        for data in self._files.get(Path(path), ()):
            mm = getattr(self._maps[data], '_mmap', None)
            if mm is not None and hasattr(mm, 'madvise'):
                mm.madvise(mmap.MADV_DONTNEED)

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
