"""The older pyaxengine API that AXERA's Qwen2.5-VL Python demo used, emulated.

That wheel wraps a compiled runner (``axengine._C.Runner``) in a thin Python class:

    sess = InferenceSession.load_from_model(path)     # Runner.load_model + set_io_buffer
    sess.set_runtime_context(group_id=g)              # Runner.set_io_shape_group + set_io_buffer
    outputs = sess.run({name: array, ...})            # feed_input_to_index(a.tobytes(), i) for
                                                      # every input, forward, fetch outputs

Names, shapes and dtypes are those of the active group (``get_input_names`` ...); nothing in
``run`` checks a shape. The runner's buffers are compiled code with no Python access, so there
is no way to write one cache row into them: on this API the pipeline feeds whole caches.

Assumptions where the runner's source is not public (documented, not guessed silently): it
keeps one buffer per input index sized to the largest group, ``feed_input_to_index`` copies the
given bytes to offset 0 and flushes the buffer, and refuses a byte count other than the active
group's size (returns False, which the Python class turns into BufferError).
"""

from __future__ import annotations

import enum

import ml_dtypes
import numpy as np

from . import _device
from ._axe_capi import engine_cffi, engine_lib, sys_lib


class DATA_TYPE(enum.IntEnum):  # noqa: N801 (the binding's name)
    """The runner's data type codes (those of AX_ENGINE_DATA_TYPE_T)."""

    UINT8 = 1
    UINT16 = 2
    FLOAT32 = 3
    SINT16 = 4
    SINT8 = 5
    SINT32 = 6
    UINT32 = 7
    BFLOAT16 = 9


_CODES = {np.dtype(np.uint8): DATA_TYPE.UINT8, np.dtype(np.uint16): DATA_TYPE.UINT16,
          np.dtype(np.float32): DATA_TYPE.FLOAT32, np.dtype(np.int16): DATA_TYPE.SINT16,
          np.dtype(np.int8): DATA_TYPE.SINT8, np.dtype(np.int32): DATA_TYPE.SINT32,
          np.dtype(np.uint32): DATA_TYPE.UINT32,
          np.dtype(ml_dtypes.bfloat16): DATA_TYPE.BFLOAT16}


class Runner:
    """Stand-in for the compiled ``_C.Runner``: one model, one active shape group."""

    def __init__(self):
        self._handle = engine_cffi.new('uint64_t **')
        self._context = engine_cffi.new('uint64_t **')
        self._io = None
        self._group = 0
        self._info = []

    def init_device(self) -> bool:
        """AX_SYS_Init + AX_ENGINE_Init."""
        return sys_lib.AX_SYS_Init() == 0

    def load_model(self, path: str) -> bool:
        """Read the model file and create its handle and context."""
        with open(path, 'rb') as f:
            self._data = f.read()
        buf = engine_cffi.from_buffer('char[]', self._data)
        if engine_lib.AX_ENGINE_CreateHandleV2(self._handle, buf, len(self._data), None) or \
                engine_lib.AX_ENGINE_CreateContextV2(self._handle[0], self._context):
            return False
        count = engine_cffi.new('AX_U32 *')
        engine_lib.AX_ENGINE_GetGroupIOInfoCount(self._handle[0], count)
        self._info = [engine_lib.emulation_io_info(self._handle[0], g) for g in range(count[0])]
        return True

    def get_io_shape_group(self) -> int:
        """Return the number of shape groups."""
        return len(self._info)

    def get_active_group_id(self) -> int:
        """Return the group ``forward`` runs."""
        return self._group

    def set_io_shape_group(self, group: int) -> None:
        """Select the group ``forward`` runs."""
        self._group = int(group)

    def set_io_buffer(self) -> bool:
        """Allocate the IO buffers once, each sized to its largest group."""
        if self._io is not None:
            return True
        n_in, n_out = len(self._info[0][0]), len(self._info[0][1])
        self._io = engine_cffi.new('AX_ENGINE_IO_T *')
        self._bufs = (engine_cffi.new(f'AX_ENGINE_IO_BUFFER_T[{n_in}]'),
                      engine_cffi.new(f'AX_ENGINE_IO_BUFFER_T[{n_out}]'))
        self._io[0].pInputs, self._io[0].pOutputs = self._bufs
        self._io[0].nInputSize, self._io[0].nOutputSize = n_in, n_out
        token = engine_cffi.new('AX_S8[]', b'Runner')
        for side, count, k in ((self._io[0].pInputs, n_in, 0), (self._io[0].pOutputs, n_out, 1)):
            for i in range(count):
                size = max(info[k][i].nbytes for info in self._info)
                phy, vir = engine_cffi.new('AX_U64*'), engine_cffi.new('AX_VOID**')
                if sys_lib.AX_SYS_MemAllocCached(phy, vir, size, 128, token):
                    return False
                side[i].phyAddr, side[i].pVirAddr, side[i].nSize = phy[0], vir[0], size
        return True

    def _ins(self):
        return self._info[self._group][0]

    def _outs(self):
        return self._info[self._group][1]

    def get_input_names(self) -> list:
        """Input names of the active group."""
        return [t.name for t in self._ins()]

    def get_output_names(self) -> list:
        """Output names of the active group."""
        return [t.name for t in self._outs()]

    def get_input_shapes(self) -> list:
        """Input shapes of the active group."""
        return [list(t.shape) for t in self._ins()]

    def get_output_shapes(self) -> list:
        """Output shapes of the active group."""
        return [list(t.shape) for t in self._outs()]

    def get_input_data_types(self) -> list:
        """Input dtype codes of the active group."""
        return [_CODES[t.dtype] for t in self._ins()]

    def get_output_data_types(self) -> list:
        """Output dtype codes of the active group."""
        return [_CODES[t.dtype] for t in self._outs()]

    def get_cmm_usage(self) -> int:
        """Bytes of CMM the IO buffers take."""
        return sum(t.nbytes for info in self._info[:1] for side in info for t in side)

    def feed_input_to_index(self, data: bytes, index: int) -> bool:
        """Copy ``data`` to input buffer ``index`` and flush it; False on a size mismatch."""
        if len(data) != self._ins()[index].nbytes:
            return False
        buf = self._io[0].pInputs[index]
        src = np.frombuffer(data, np.uint8)
        engine_cffi.memmove(buf.pVirAddr, engine_cffi.cast('void *', src.ctypes.data), len(data))
        return sys_lib.AX_SYS_MflushCache(buf.phyAddr, buf.pVirAddr, buf.nSize) == 0

    def forward(self) -> bool:
        """Run the active group."""
        if len(self._info) > 1:
            ret = engine_lib.AX_ENGINE_RunGroupIOSync(self._handle[0], self._context[0],
                                                      self._group, self._io)
        else:
            ret = engine_lib.AX_ENGINE_RunSyncV2(self._handle[0], self._context[0], self._io)
        return ret == 0

    def fetch_output_from_index(self, index: int) -> np.ndarray:
        """Invalidate output buffer ``index``; return the active group's bytes as uint8."""
        buf = self._io[0].pOutputs[index]
        sys_lib.AX_SYS_MinvalidateCache(buf.phyAddr, buf.pVirAddr, buf.nSize)
        n = self._outs()[index].nbytes
        return np.frombuffer(engine_cffi.buffer(buf.pVirAddr, n), np.uint8).copy()


class _C:
    """What ``from axengine import _C`` gives on the older wheel."""

    Runner = Runner
    DATA_TYPE = DATA_TYPE


_NUMPY = {DATA_TYPE.UINT8: np.uint8, DATA_TYPE.UINT16: np.uint16, DATA_TYPE.SINT8: np.int8,
          DATA_TYPE.SINT16: np.int16, DATA_TYPE.UINT32: np.uint32, DATA_TYPE.SINT32: np.int32,
          DATA_TYPE.FLOAT32: np.float32, DATA_TYPE.BFLOAT16: ml_dtypes.bfloat16}


class InferenceSession:
    """The older wheel's session class."""

    def __init__(self, handle) -> None:
        self._handle = handle
        if not self._handle.init_device():
            raise SystemError('Err... Something wrong while initializing the AX System.')

    @classmethod
    def load_from_model(cls, model_path: str) -> InferenceSession:
        """Load a model and set up its IO buffers."""
        sess = cls(_C.Runner())
        if not sess._handle.load_model(model_path):
            raise BufferError('Err... Something wrong while loading the model.')
        if not sess._handle.set_io_buffer():
            raise BufferError('Err... Something wrong while setting the model runtime context.')
        return sess

    @property
    def num_io_groups(self) -> int:
        """Return the number of shape groups."""
        return self._handle.get_io_shape_group()

    def set_runtime_context(self, group_id: int) -> None:
        """Make ``group_id`` the group ``run`` uses."""
        if group_id < 0 or group_id > self.num_io_groups:
            raise IndexError('Err... the id of group should be smaller than model io groups.')
        self._handle.set_io_shape_group(group_id)
        if not self._handle.set_io_buffer():
            raise BufferError('Err... Something wrong while setting the model runtime context.')

    def get_input_names(self) -> list:
        """Input names of the active group."""
        return self._handle.get_input_names()

    def get_output_names(self) -> list:
        """Output names of the active group."""
        return self._handle.get_output_names()

    def get_input_shapes(self) -> list:
        """Input shapes of the active group."""
        return self._handle.get_input_shapes()

    def get_output_shapes(self) -> list:
        """Output shapes of the active group."""
        return self._handle.get_output_shapes()

    def get_output_dtypes(self) -> list:
        """Output dtype codes of the active group."""
        return self._handle.get_output_data_types()

    def feed_input_to_index(self, input_datum: np.ndarray, input_index: int) -> None:
        """Copy one input (its bytes) into the runner."""
        if not self._handle.feed_input_to_index(input_datum.tobytes(), input_index):
            raise BufferError(f'Err... Something wrong while reading the {input_index}th input.')

    def fetch_output_from_index(self, output_index: int) -> np.ndarray:
        """One output as an array of its dtype and shape."""
        data = self._handle.fetch_output_from_index(output_index).tobytes()
        dtype = _NUMPY[self.get_output_dtypes()[output_index]]
        return np.frombuffer(data, dtype).reshape(*self.get_output_shapes()[output_index])

    def run(self, input_feed: dict) -> list:
        """Feed every input by index, run, return every output (a list)."""
        for i, name in enumerate(self.get_input_names()):
            self.feed_input_to_index(input_feed[name], i)
        self._handle.forward()
        return [self.fetch_output_from_index(i) for i in range(len(self.get_output_names()))]


__all__ = ['InferenceSession', '_C', '_device']
