"""Stand-in for the compiled ``axengine._C`` runner of the older pyaxengine wheel (0.2.0a0).

That wheel (the one AXERA's Qwen2.5-VL-3B-Instruct.axera demo's infer.py uses) is a thin Python
class (axengine/_handle.py, AXERA's code, run unmodified) around a compiled ``_C.Runner``
whose source and aarch64 binary are not available. test/npu_stub/build.py copies this file in
as ``axengine/_C.py``; it drives the stub NPU libraries through AXERA's C API (cffi, the
declarations of test/npu_stub/python/npu_host.py).

Assumptions (not from source; the Python class constrains the interface only):

- ``load_model`` creates one handle and context; ``set_io_buffer`` allocates, once, one cached
  CMM buffer per input / output index sized to the largest shape group (what pyaxengine 0.1.x
  does in Python); later calls keep them;
- ``feed_input_to_index(bytes, i)`` refuses (False) a byte count other than the active group's
  tensor, copies the bytes to offset 0 and flushes the whole buffer;
- ``forward`` runs the active group (``AX_ENGINE_RunGroupIOSync``; ``RunSyncV2`` for one
  group); ``fetch_output_from_index`` invalidates the buffer and returns a copy of the active
  group's bytes as uint8;
- data type codes are those of ``AX_ENGINE_DATA_TYPE_T``.
"""

from __future__ import annotations

import enum

import numpy as np


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


class Runner:
    """One model, one active shape group."""

    def __init__(self):
        import npu_host
        self._ffi, self._sys, self._engine = npu_host.libraries()
        self._handle = self._ffi.new('uint64_t **')
        self._context = self._ffi.new('uint64_t **')
        self._io = None
        self._group = 0
        self._info = []

    def init_device(self) -> bool:
        """AX_SYS_Init + AX_ENGINE_Init."""
        return self._sys.AX_SYS_Init() == 0 and self._engine.AX_ENGINE_Init(self._ffi.NULL) == 0

    def load_model(self, path: str) -> bool:
        """Read the model file; create its handle and context; read every group's IO info."""
        with open(path, 'rb') as f:
            self._data = f.read()
        buf = self._ffi.from_buffer('char[]', self._data)
        e, ffi = self._engine, self._ffi
        if e.AX_ENGINE_CreateHandleV2(self._handle, buf, len(self._data), ffi.NULL) or \
                e.AX_ENGINE_CreateContextV2(self._handle[0], self._context):
            return False
        count = ffi.new('AX_U32 *')
        if e.AX_ENGINE_GetGroupIOInfoCount(self._handle[0], count):
            return False
        for g in range(count[0]):
            info = ffi.new('AX_ENGINE_IO_INFO_T **')
            if e.AX_ENGINE_GetGroupIOInfo(self._handle[0], g, info):
                return False
            self._info.append(info[0])
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
        ffi, first = self._ffi, self._info[0]
        self._io = ffi.new('AX_ENGINE_IO_T *')
        self._bufs = (ffi.new('AX_ENGINE_IO_BUFFER_T[]', max(1, first.nInputSize)),
                      ffi.new('AX_ENGINE_IO_BUFFER_T[]', max(1, first.nOutputSize)))
        self._io.pInputs, self._io.pOutputs = self._bufs
        self._io.nInputSize, self._io.nOutputSize = first.nInputSize, first.nOutputSize
        token = ffi.new('AX_S8[]', b'Runner')
        for side, count, attr in ((self._io.pInputs, first.nInputSize, 'pInputs'),
                                  (self._io.pOutputs, first.nOutputSize, 'pOutputs')):
            for i in range(count):
                size = max(getattr(info, attr)[i].nSize for info in self._info)
                phy, vir = ffi.new('AX_U64 *'), ffi.new('void **')
                if self._sys.AX_SYS_MemAllocCached(phy, vir, size, 128, token):
                    return False
                side[i].phyAddr, side[i].pVirAddr, side[i].nSize = phy[0], vir[0], size
        return True

    def _metas(self, attr):
        info = self._info[self._group]
        n = info.nInputSize if attr == 'pInputs' else info.nOutputSize
        return [getattr(info, attr)[i] for i in range(n)]

    def get_input_names(self) -> list:
        """Input names of the active group."""
        return [self._ffi.string(m.pName).decode() for m in self._metas('pInputs')]

    def get_output_names(self) -> list:
        """Output names of the active group."""
        return [self._ffi.string(m.pName).decode() for m in self._metas('pOutputs')]

    def get_input_shapes(self) -> list:
        """Input shapes of the active group."""
        return [[m.pShape[j] for j in range(m.nShapeSize)] for m in self._metas('pInputs')]

    def get_output_shapes(self) -> list:
        """Output shapes of the active group."""
        return [[m.pShape[j] for j in range(m.nShapeSize)] for m in self._metas('pOutputs')]

    def get_input_data_types(self) -> list:
        """Input dtype codes of the active group."""
        return [DATA_TYPE(m.eDataType) for m in self._metas('pInputs')]

    def get_output_data_types(self) -> list:
        """Output dtype codes of the active group."""
        return [DATA_TYPE(m.eDataType) for m in self._metas('pOutputs')]

    def get_cmm_usage(self) -> int:
        """Bytes of CMM the IO buffers take."""
        io = self._io
        return sum(io.pInputs[i].nSize for i in range(io.nInputSize)) + \
            sum(io.pOutputs[i].nSize for i in range(io.nOutputSize))

    def feed_input_to_index(self, data: bytes, index: int) -> bool:
        """Copy ``data`` to input buffer ``index`` and flush it; False on a size mismatch."""
        if len(data) != self._metas('pInputs')[index].nSize:
            return False
        buf = self._io.pInputs[index]
        self._ffi.memmove(buf.pVirAddr, data, len(data))
        return self._sys.AX_SYS_MflushCache(buf.phyAddr, buf.pVirAddr, buf.nSize) == 0

    def forward(self) -> bool:
        """Run the active group."""
        e = self._engine
        if len(self._info) > 1:
            ret = e.AX_ENGINE_RunGroupIOSync(self._handle[0], self._context[0], self._group,
                                             self._io)
        else:
            ret = e.AX_ENGINE_RunSyncV2(self._handle[0], self._context[0], self._io)
        return ret == 0

    def fetch_output_from_index(self, index: int) -> np.ndarray:
        """Invalidate output buffer ``index``; return the active group's bytes as uint8."""
        buf = self._io.pOutputs[index]
        self._sys.AX_SYS_MinvalidateCache(buf.phyAddr, buf.pVirAddr, buf.nSize)
        n = self._metas('pOutputs')[index].nSize
        return np.frombuffer(self._ffi.buffer(buf.pVirAddr, n), np.uint8).copy()
