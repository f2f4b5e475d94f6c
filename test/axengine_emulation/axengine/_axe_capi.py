"""Emulated ``axengine._axe_capi``: the FFI objects and libraries pyaxengine loads with cffi.

The real module cdef's ax_sys_api.h / ax_engine_api.h and dlopens libax_sys / libax_engine into
``sys_cffi``/``sys_lib`` and ``engine_cffi``/``engine_lib``. cffi is not a dependency of this
project, so ``_FFI`` is the part of ``cffi.FFI`` that pyaxengine and qwen_vl_ros use, on ctypes,
with cffi's rules where code could go wrong: pointer arguments must be pointer objects (cffi
raises TypeError for a plain int), structs are read and written by field through ``[0]``.

The struct layouts are those of the 64-bit cdef (AX_ENGINE_IO_BUFFER_T, AX_ENGINE_IO_T).
"""

from __future__ import annotations

import ctypes as C
import re

from . import _device

__all__ = ['sys_lib', 'sys_cffi', 'engine_lib', 'engine_cffi']

VoidP = C.POINTER(C.c_char)   # cdata 'void *' (kept a pointer object, never an int)


class AX_ENGINE_IO_SETTING_T(C.Structure):  # noqa: N801 (C names)
    _fields_ = [('nWbtIndex', C.c_uint32), ('u64Reserved', C.c_uint64 * 7)]


class AX_ENGINE_IO_BUFFER_T(C.Structure):  # noqa: N801
    _fields_ = [('phyAddr', C.c_uint64), ('pVirAddr', VoidP), ('nSize', C.c_uint32),
                ('pStride', C.POINTER(C.c_int32)), ('nStrideSize', C.c_uint8),
                ('u64Reserved', C.c_uint64 * 11)]


class AX_ENGINE_IO_T(C.Structure):  # noqa: N801
    _fields_ = [('pInputs', C.POINTER(AX_ENGINE_IO_BUFFER_T)), ('nInputSize', C.c_uint32),
                ('pOutputs', C.POINTER(AX_ENGINE_IO_BUFFER_T)), ('nOutputSize', C.c_uint32),
                ('nBatchSize', C.c_uint32), ('pIoSetting', C.POINTER(AX_ENGINE_IO_SETTING_T)),
                ('u64Reserved', C.c_uint64 * 10)]


_SCALARS = {'AX_U64': C.c_uint64, 'uint64_t': C.c_uint64, 'AX_U32': C.c_uint32,
            'AX_S32': C.c_int32, 'AX_S8': C.c_int8, 'char': C.c_char, 'AX_U8': C.c_uint8,
            'AX_VOID': None, 'void': None,
            'AX_ENGINE_IO_T': AX_ENGINE_IO_T, 'AX_ENGINE_IO_BUFFER_T': AX_ENGINE_IO_BUFFER_T}


def _base(name: str):
    if name not in _SCALARS:
        raise TypeError(f'emulated cffi: unknown type {name!r}')
    return _SCALARS[name]


def _address(ptr, what: str = 'void *') -> int:
    """Address held by a pointer cdata; cffi refuses ints and other objects, so do we."""
    if isinstance(ptr, C._Pointer):
        return C.addressof(ptr.contents) if ptr else 0
    if isinstance(ptr, C.Array):
        return C.addressof(ptr)
    if isinstance(ptr, C.c_void_p):
        return ptr.value or 0
    if isinstance(ptr, _Owned):
        return ptr.address
    raise TypeError(f"initializer for ctype '{what}' must be a cdata pointer, not "
                    f'{type(ptr).__name__}')


class _Owned:
    """A cdata that owns Python memory it points at (``new('char[]', ...)``/``from_buffer``)."""

    def __init__(self, obj, address: int, size: int):
        self.obj = obj
        self.address = address
        self.size = size

    def __len__(self):
        return self.size


class _FFI:
    """The subset of ``cffi.FFI`` used by pyaxengine's AXEngineSession and qwen_vl_ros."""

    NULL = VoidP()

    def new(self, ctype: str, init=None):
        """Allocate zeroed C memory of ``ctype`` ('T *', 'T **', 'T[n]' or 'T[]')."""
        m = re.fullmatch(r'\s*(\w+)\s*(\*{1,2}|\[\s*(\d*)\s*\])\s*', ctype)
        if not m:
            raise TypeError(f'emulated cffi: cannot allocate {ctype!r}')
        name, kind, count = m.group(1), m.group(2), m.group(3)
        base = _base(name)
        if kind == '**':
            inner = VoidP if base is None else C.POINTER(base)
            return C.pointer(inner())
        if kind == '*':
            if base is None:
                raise TypeError("emulated cffi: cannot allocate 'void *'")
            cell = base()
            if init is not None:
                cell.value = init
            return C.pointer(cell)
        # arrays
        if count:
            return (base * int(count))()
        data = init if isinstance(init, (bytes, bytearray)) else b''
        arr = (base * (len(data) + 1))()
        C.memmove(arr, bytes(data), len(data))
        return arr

    def cast(self, ctype: str, value):
        """'void *'/'char *' -> a pointer cdata; 'uintptr_t' -> the address as an int."""
        ctype = ctype.replace(' ', '')
        if ctype in ('uintptr_t', 'uint64_t', 'AX_U64', 'size_t'):
            return value if isinstance(value, int) else _address(value)
        if ctype in ('void*', 'char*', 'AX_VOID*', 'uint8_t*'):
            if isinstance(value, int):
                return C.cast(value, VoidP)
            return C.cast(_address(value), VoidP)
        raise TypeError(f'emulated cffi: cannot cast to {ctype!r}')

    def buffer(self, ptr, size: int):
        """Return a writable buffer over ``size`` bytes at ``ptr`` (numpy can wrap it)."""
        return memoryview((C.c_char * int(size)).from_address(_address(ptr))).cast('B')

    def memmove(self, dest, src, n: int) -> None:
        """Copy ``n`` bytes between two pointer cdatas."""
        C.memmove(_address(dest), _address(src), int(n))

    def from_buffer(self, ctype: str, obj):
        """Return a 'char[]' cdata over a Python buffer (pyaxengine passes its mmap this way)."""
        view = memoryview(obj).cast('B')
        arr = (C.c_char * len(view)).from_buffer(obj) if not view.readonly else None
        address = C.addressof(arr) if arr is not None else _readonly_address(view)
        return _Owned((obj, view, arr), address, len(view))

    def string(self, cdata) -> bytes:
        """Bytes up to the first NUL of a 'char[]'/'char *' cdata."""
        return C.string_at(_address(cdata))


def _readonly_address(view: memoryview) -> int:
    import numpy as np
    return np.frombuffer(view, np.uint8).ctypes.data


engine_cffi = _FFI()
sys_cffi = engine_cffi


class _SysLib:
    """ax_sys: CMM allocation and cache maintenance (see _device for the two-sided memory)."""

    def AX_SYS_Init(self):  # noqa: N802 (C names)
        return 0

    def AX_SYS_Deinit(self):  # noqa: N802
        return 0

    def AX_SYS_MemAllocCached(self, phy, vir, size, align, token):  # noqa: N802
        block = _device.MEMORY.alloc(int(size), int(align))
        phy[0] = block.phy
        vir[0] = C.cast(block.vir, VoidP)
        return 0

    def AX_SYS_MemFree(self, phy, vir):  # noqa: N802
        _address(vir)
        return 0 if _device.MEMORY.free(int(phy)) else -1

    def AX_SYS_MflushCache(self, phy, vir, size):  # noqa: N802
        if not isinstance(phy, int):
            raise TypeError(f'AX_U64 expected, got {type(phy).__name__}')
        return _device.flush(phy, _address(vir), int(size))

    def AX_SYS_MinvalidateCache(self, phy, vir, size):  # noqa: N802
        if not isinstance(phy, int):
            raise TypeError(f'AX_U64 expected, got {type(phy).__name__}')
        return _device.invalidate(phy, _address(vir), int(size))


class _EngineLib:
    """ax_engine: model handles, contexts and synchronous runs on an AX_ENGINE_IO_T."""

    AX_ENGINE_DT_UINT8 = 1
    AX_ENGINE_DT_UINT16 = 2
    AX_ENGINE_DT_FLOAT32 = 3
    AX_ENGINE_DT_SINT16 = 4
    AX_ENGINE_DT_SINT8 = 5
    AX_ENGINE_DT_SINT32 = 6
    AX_ENGINE_DT_UINT32 = 7
    AX_ENGINE_DT_BFLOAT16 = 9

    def __init__(self):
        self._models: dict[int, _device.Model] = {}
        self._cells = {}
        self._next = 1

    def _new_handle(self, model) -> C._Pointer:
        cell = C.c_uint64(self._next)
        self._models[self._next] = model
        self._cells[self._next] = cell
        self._next += 1
        return C.pointer(cell)

    def _model(self, handle) -> _device.Model:
        if not isinstance(handle, C._Pointer) or not handle:
            raise TypeError('uint64_t * handle expected')
        return self._models[handle.contents.value]

    def AX_ENGINE_GetVersion(self):  # noqa: N802
        return engine_cffi.new('char[]', b'emulated-onnxruntime')

    def AX_ENGINE_CreateHandleV2(self, handle, data, size, extra=None):  # noqa: N802
        try:
            raw = data.obj[1] if isinstance(data, _Owned) else memoryview(data)
            model = _device.Model(raw[:int(size)])
        except Exception:  # a bad file: the C API returns an error code
            return -1
        handle[0] = self._new_handle(model)
        return 0

    def AX_ENGINE_CreateContextV2(self, handle, context):  # noqa: N802
        self._model(handle)
        context[0] = C.pointer(C.c_uint64(0))
        return 0

    def AX_ENGINE_DestroyHandle(self, handle):  # noqa: N802
        if handle:
            key = handle.contents.value
            self._models.pop(key, None)
            self._cells.pop(key, None)
        return 0

    def AX_ENGINE_GetGroupIOInfoCount(self, handle, count):  # noqa: N802
        count[0] = len(self._model(handle).groups)
        return 0

    def emulation_io_info(self, handle, group: int):
        """Emulation only: the facts the real session reads from AX_ENGINE_IO_INFO_T."""
        g = self._model(handle).groups[group]
        return g.inputs, g.outputs

    def AX_ENGINE_RunGroupIOSync(self, handle, context, group, io):  # noqa: N802
        if not isinstance(io, C._Pointer):
            raise TypeError('AX_ENGINE_IO_T * expected')
        return self._model(handle).run(int(group), io[0])

    def AX_ENGINE_RunSyncV2(self, handle, context, io):  # noqa: N802
        if not isinstance(io, C._Pointer):
            raise TypeError('AX_ENGINE_IO_T * expected')
        return self._model(handle).run(0, io[0])


sys_lib = _SysLib()
engine_lib = _EngineLib()
