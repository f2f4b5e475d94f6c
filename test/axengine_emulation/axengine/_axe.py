"""Emulated AXEngineSession: the on-board NPU session of pyaxengine, same attributes and steps.

As in pyaxengine's axengine/_axe.py: the model file is memory-mapped and handed to
AX_ENGINE_CreateHandleV2; ONE cached CMM buffer per input index and per output index is
allocated at load, sized to the largest of all shape groups, and wired into ``self._io``
(an AX_ENGINE_IO_T); ``run`` requires every input, asserts exact shape and dtype for the chosen
group, memmoves each fed array into its buffer and flushes the WHOLE buffer (nSize), runs
AX_ENGINE_RunGroupIOSync (several groups) or AX_ENGINE_RunSyncV2, then invalidates each output
buffer (nSize) and copies the group's bytes out. Attribute names (``_handle``, ``_context``,
``_io``, ``_shape_count``, ``_inputs``, ``_outputs``, ``_io_inputs_pool``, ...) and the module
globals ``engine_cffi``, ``engine_lib``, ``sys_lib`` are those of the real module.
"""

from __future__ import annotations

import mmap
import os

import numpy as np

from ._axe_capi import engine_cffi, engine_lib, sys_lib
from ._base_session import Session
from ._node import NodeArg

__all__ = ['AXEngineSession']


class AXEngineSession(Session):
    """One model on the (emulated) NPU."""

    def __init__(self, path_or_bytes, sess_options=None, provider_options=None, **kwargs):
        super().__init__()
        self._handle = engine_cffi.new('uint64_t **')
        self._context = engine_cffi.new('uint64_t **')
        self._io = engine_cffi.new('AX_ENGINE_IO_T *')

        if isinstance(path_or_bytes, (str, os.PathLike)):
            self._model_name = os.path.splitext(os.path.basename(path_or_bytes))[0]
            with open(path_or_bytes, 'rb') as f:
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._model_buffer = engine_cffi.from_buffer('char[]', mapped)
            self._model_buffer_size = len(mapped)
            self._mmapped_file = mapped
        elif isinstance(path_or_bytes, bytes):
            self._model_buffer = engine_cffi.from_buffer('char[]', path_or_bytes)
            self._model_buffer_size = len(path_or_bytes)
        else:
            raise TypeError(f"Unable to load model from type '{type(path_or_bytes)}'")

        if engine_lib.AX_ENGINE_CreateHandleV2(self._handle, self._model_buffer,
                                               self._model_buffer_size, None) != 0 or \
                engine_lib.AX_ENGINE_CreateContextV2(self._handle[0], self._context) != 0:
            raise RuntimeError('Failed to load model.')

        count = engine_cffi.new('AX_U32 *')
        if engine_lib.AX_ENGINE_GetGroupIOInfoCount(self._handle[0], count) != 0:
            raise RuntimeError('Failed to get model shape group.')
        self._shape_count = count[0]
        self._info = [engine_lib.emulation_io_info(self._handle[0], g)
                      for g in range(self._shape_count)]
        self._inputs = [[NodeArg(t.name, t.dtype, t.shape) for t in ins]
                        for ins, _ in self._info]
        self._outputs = [[NodeArg(t.name, t.dtype, t.shape) for t in outs]
                         for _, outs in self._info]

        self._align = 128
        self._cmm_token = engine_cffi.new('AX_S8[]', b'PyEngine')
        self._io[0].nInputSize = len(self.get_inputs())
        self._io[0].nOutputSize = len(self.get_outputs())
        _inputs = engine_cffi.new(f'AX_ENGINE_IO_BUFFER_T[{self._io[0].nInputSize}]')
        _outputs = engine_cffi.new(f'AX_ENGINE_IO_BUFFER_T[{self._io[0].nOutputSize}]')
        self._io_buffers = (_inputs, _outputs)
        self._io[0].pInputs = _inputs
        self._io[0].pOutputs = _outputs

        # One persistent cached CMM buffer per input and per output index, sized to the largest
        # shape group, exactly as pyaxengine allocates them.
        self._io_inputs_pool = self._alloc_pool(self._io[0].pInputs, 0, 'input')
        self._io_outputs_pool = self._alloc_pool(self._io[0].pOutputs, 1, 'output')

    def _alloc_pool(self, buffers, side: int, what: str) -> list:
        pool = []
        count = len(self.get_inputs() if side == 0 else self.get_outputs())
        for i in range(count):
            size = max(self._info[g][side][i].nbytes for g in range(self._shape_count))
            buffers[i].nSize = size
            phy, vir = engine_cffi.new('AX_U64*'), engine_cffi.new('AX_VOID**')
            pool.append((phy, vir))
            if sys_lib.AX_SYS_MemAllocCached(phy, vir, size, self._align, self._cmm_token):
                raise RuntimeError(f'Failed to allocate memory for {what}.')
            buffers[i].phyAddr = phy[0]
            buffers[i].pVirAddr = vir[0]
        return pool

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        self._unload()
        return False

    def __del__(self):
        self._unload()

    def _unload(self):
        handle = getattr(self, '_handle', None)
        if handle is not None and handle[0]:
            engine_lib.AX_ENGINE_DestroyHandle(handle[0])
            handle[0] = type(handle[0])()  # NULL

    def run(self, output_names, input_feed, run_options=None, shape_group: int = 0):
        """Run one shape group: copy every input in (flushing whole buffers), copy outputs out."""
        self._validate_input(input_feed)
        self._validate_output(output_names)
        if output_names is None:
            output_names = [o.name for o in self.get_outputs(shape_group)]
        if shape_group > self._shape_count - 1 or shape_group < 0:
            raise ValueError(f'Invalid shape group: {shape_group}')

        for key, npy in input_feed.items():
            for i, one in enumerate(self.get_inputs(shape_group)):
                if one.name == key:
                    assert list(one.shape) == list(npy.shape) and one.dtype == npy.dtype, (
                        f'model inputs({key}) expect shape {one.shape} and dtype {one.dtype}, '
                        f'however gets input with shape {npy.shape} and dtype {npy.dtype}')
                    if not (npy.flags.c_contiguous or npy.flags.f_contiguous):
                        npy = np.ascontiguousarray(npy)
                    npy_ptr = engine_cffi.cast('void *', npy.ctypes.data)
                    engine_cffi.memmove(self._io[0].pInputs[i].pVirAddr, npy_ptr, npy.nbytes)
                    sys_lib.AX_SYS_MflushCache(self._io[0].pInputs[i].phyAddr,
                                               self._io[0].pInputs[i].pVirAddr,
                                               self._io[0].pInputs[i].nSize)
                    break

        if self._shape_count > 1:
            ret = engine_lib.AX_ENGINE_RunGroupIOSync(self._handle[0], self._context[0],
                                                      shape_group, self._io)
        else:
            ret = engine_lib.AX_ENGINE_RunSyncV2(self._handle[0], self._context[0], self._io)
        if ret != 0:
            raise RuntimeError('Failed to run model.')

        outputs = []
        group_outputs = self.get_outputs(shape_group)
        for i, meta in enumerate(group_outputs):
            sys_lib.AX_SYS_MinvalidateCache(self._io[0].pOutputs[i].phyAddr,
                                            self._io[0].pOutputs[i].pVirAddr,
                                            self._io[0].pOutputs[i].nSize)
            size = np.dtype(meta.dtype).itemsize * int(np.prod(meta.shape))
            npy = np.frombuffer(engine_cffi.buffer(self._io[0].pOutputs[i].pVirAddr, size),
                                dtype=meta.dtype).reshape(meta.shape).copy()
            if meta.name in output_names:
                outputs.append(npy)
        return outputs
