"""The KV cache on the M.2 card: kept in the AXCLRT session's device input buffers.

Why: on a host with an AX650N M.2 card (Raspberry Pi 5 + LLM-8850, ROCK 5B+ + AX-M1),
pyaxengine's ``AXCLRTExecutionProvider`` (axengine/_axclrt.py) ``run`` copies every fed input
host -> card with ``axclrtMemcpy`` and every output back. Feeding the (1, 1023, 256) bf16 K and
V caches of 36 layers that way moves ~37.7 MB over PCIe per token (a Pi 5's link: PCIe 2.0 x1,
~0.45 GB/s, i.e. ~85 ms per ~200 ms token). Here the caches never leave the card.

What AXERA's own runner does, and what this follows (ax-llm, src/runner/LLM_decode.cpp, the
AXCL branch of ``LLM::Impl::Run`` and ``GenerateKVCachePrefill``): after each layer's
inference it copies ``K_cache_out`` / ``V_cache_out`` DEVICE TO DEVICE
(``llm_d2d`` = ``axclrtMemcpy(..., AXCL_MEMCPY_DEVICE_TO_DEVICE)``) into the decode group's
``K_cache`` / ``V_cache`` input buffer at offset ``kv_slot * kv_width`` (prefill: at
``history_len * kv_width``, ``count`` rows); ``indices`` and ``mask`` go host -> device per
layer; a layer's hidden ``output`` goes device to device into the next layer's ``input`` and
only the last one comes back to the host. This module does the same, with two differences:
``indices`` and ``mask`` (the same bytes for every layer of a step) cross the link once per
step and are copied on the card to the other layers (``_Staged``), and the decoder asks for the
hidden output on the host only from the last layer (``step(..., fetch=False)`` returns a
``DeviceTensor`` the next layer's ``step`` copies on the card).

So per decode token only the first layer's ``indices``, ``mask`` and ``input`` go to the card
and the last layer's ``output`` comes back (the post model's ``run`` adds its input and the
logits); per layer everything else stays on the card.

What it uses of pyaxengine 0.1.3.rc3 (axengine/_axclrt.py, ``AXCLRTSession``): ``_io`` (the
``axclrtEngineIO`` with one device buffer per input / output index, sized to the largest shape
group), ``_model_id``, ``_context_id``, ``_thread_context``, ``_shape_count``,
``get_inputs(g)``, ``get_outputs(g)``, and the module globals ``axclrt_cffi`` / ``axclrt_lib``
(``axclrtMemcpy``, ``axclrtEngineExecute``, ``axclrtEngineGet{Input,Output}BufferByIndex``,
``axclrtSetCurrentContext``). Older releases lack ``_thread_context`` and get the plain ``run``
(their AXCLRT ``run`` has other trouble: see the README's card section).

Outputs are read by name from ``get_outputs(g)``, never through pyaxengine's ``run``, whose
0.1.3.rc3 version maps outputs with ``output_names.index`` over ALL outputs (a subset raises
ValueError). ``axclrtMalloc`` memory is never zeroed: the K/V buffers are zeroed once at attach
(and by ``clear``), on the card: zeros go host -> device into K, then K is copied to V.
"""

from __future__ import annotations

import sys
import weakref

import numpy as np

from ..errors import RuntimeFailure
from .axengine_kv import KVBuffers

H2D, D2H, D2D = 1, 2, 3  # axclrtMemcpyKind: HOST_TO_DEVICE, DEVICE_TO_HOST, DEVICE_TO_DEVICE
SHARED_INPUTS = ('indices', 'mask')  # the same bytes for every layer of one step


class DeviceTensor:
    """A tensor left in card memory (a layer's ``output``): address, bytes, shape, dtype.

    Valid until its layer runs again; it keeps that layer's cache object (and so its session
    and device buffers) alive.
    """

    __slots__ = ('ptr', 'nbytes', 'shape', 'dtype', '_owner')

    def __init__(self, ptr: int, shape, dtype, owner):
        self.ptr, self.shape, self.dtype = ptr, tuple(shape), np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self._owner = owner


class _Staged:
    """Where each shared small input was last sent to the card, and its bytes.

    A later layer that needs the same bytes gets a device-to-device copy from there instead of
    another transfer over the link. The record holds its source weakly: a cache object that
    died (its session and device buffers freed) is never copied from.
    """

    def __init__(self):
        self._last = {}

    def source(self, name: str, arr: np.ndarray):
        """Return the device address holding exactly ``arr``'s bytes, or None."""
        rec = self._last.get(name)
        if rec is None:
            return None
        owner, ptr, data = rec
        if owner() is None or data.shape != arr.shape or data.dtype != arr.dtype or \
                not np.array_equal(data.view(np.uint8), arr.view(np.uint8)):
            return None
        return ptr

    def record(self, name: str, arr: np.ndarray, ptr: int, owner) -> None:
        self._last[name] = (weakref.ref(owner), ptr, arr.copy())


_STAGED: dict = {}  # per pyaxengine runtime library (one process, one AXCL runtime)


def _native(session):
    """Return (provider session, ffi, lib) of an AXCLRT session, or a str saying what lacks."""
    inner = getattr(session, '_sess', session)
    module = sys.modules.get(type(inner).__module__)
    ffi, lib = getattr(module, 'axclrt_cffi', None), getattr(module, 'axclrt_lib', None)
    missing = [n for n in ('_io', '_model_id', '_context_id', '_thread_context',
                           '_shape_count', 'get_inputs', 'get_outputs') if not hasattr(inner, n)]
    if missing or ffi is None or lib is None:
        return f'{type(inner).__name__} lacks {missing or "axclrt_cffi/axclrt_lib"}'
    for name in ('axclrtMemcpy', 'axclrtEngineExecute', 'axclrtEngineGetInputBufferByIndex',
                 'axclrtEngineGetOutputBufferByIndex', 'axclrtSetCurrentContext'):
        try:
            getattr(lib, name)
        except AttributeError:
            return f'the AXCL runtime library has no {name}'
    return inner, ffi, lib


class DeviceKV(KVBuffers):
    """One decoder layer's K/V cache in its AXCLRT session's device ``K_cache``/``V_cache``.

    The same interface as the board's ``InBufferKV`` (axengine_kv.py): ``step`` runs a group
    with the cache in place, copies the new K/V rows into it on the card and returns the hidden
    output (on the host, or left on the card with ``fetch=False``); ``run`` returns every
    output on the host; ``clear`` zeroes the cache.
    """

    where = 'in the card\'s device input buffers'
    _native = staticmethod(_native)

    def __init__(self, session, inner, ffi, lib, decode_group: int):
        self._session = session  # owns the model, context and device buffers used below
        self._ffi, self._lib = ffi, lib
        self._model, self._ctx = inner._model_id[0], inner._context_id[0]
        self._io, self._thread_ctx = inner._io[0], inner._thread_context[0]
        self._staged = _STAGED.setdefault(id(lib), _Staged())
        n_in = len(inner.get_inputs(decode_group))
        n_out = len(inner.get_outputs(decode_group))
        self._in = [self._buffer(lib.axclrtEngineGetInputBufferByIndex, i) for i in range(n_in)]
        self._out = [self._buffer(lib.axclrtEngineGetOutputBufferByIndex, i)
                     for i in range(n_out)]
        ins, outs = self._layout(inner, decode_group, n_in, n_out)
        for at in (self._k_at, self._v_at):
            if self._in[at][1] < self.length * self.row_bytes:
                raise ValueError('a cache buffer is smaller than the decode group cache')
        for at in self._out_at[:2]:  # rows are copied byte for byte into the cache
            if np.dtype(outs[decode_group][at].dtype) != self.dtype:
                raise ValueError('K_cache_out / V_cache_out differ in dtype from the cache')
        # Per group: input name -> (index, shape, dtype); outputs: (address, shape, dtype).
        self._groups = {}
        for g in ins:
            feeds = {a.name: (i, tuple(int(s) for s in a.shape), np.dtype(a.dtype))
                     for i, a in enumerate(ins[g])}
            results = [(self._out[i][0], tuple(int(s) for s in a.shape), np.dtype(a.dtype))
                       for i, a in enumerate(outs[g])]
            for (_, shape, dtype), (_, size) in zip(results, self._out):
                if int(np.prod(shape)) * dtype.itemsize > size:
                    raise ValueError('an output buffer is smaller than its tensor')
            self._groups[g] = (feeds, results, self._prefix(ins[g][self._k_at]))
        self.clear()

    def _buffer(self, get, index: int) -> tuple:
        """(device address, size) of one IO buffer of the session."""
        ptr, size = self._ffi.new('void **'), self._ffi.new('uint64_t *')
        if get(self._io, index, ptr, size) != 0:
            raise ValueError(f'no device buffer for IO index {index}')
        return int(self._ffi.cast('uintptr_t', ptr[0])), int(size[0])

    def _copy(self, dst, src, nbytes: int, kind: int) -> None:
        """``axclrtMemcpy`` of exactly ``nbytes``; device addresses are ints, host ones cdata."""
        ffi = self._ffi
        d = ffi.cast('void *', dst) if isinstance(dst, int) else dst
        s = ffi.cast('void *', src) if isinstance(src, int) else src
        ret = self._lib.axclrtMemcpy(d, s, nbytes, kind)
        if ret != 0:
            raise RuntimeFailure(f'axclrtMemcpy (kind {kind}, {nbytes} bytes) failed: '
                                 f'0x{ret & 0xFFFFFFFF:08x}')

    def _host(self, arr: np.ndarray):
        return self._ffi.cast('void *', arr.ctypes.data)

    def _current(self) -> None:
        """Make the session's context current on this thread (as pyaxengine's run does)."""
        if self._lib.axclrtSetCurrentContext(self._thread_ctx) != 0:
            raise RuntimeFailure('axclrtSetCurrentContext failed')

    def clear(self) -> None:
        """Zero every cache row on the card (at attach, and after a run that wrote NaN)."""
        self._current()
        (k, k_size), (v, v_size) = self._in[self._k_at], self._in[self._v_at]
        zeros = np.zeros(max(k_size, v_size), np.uint8)
        self._copy(k, self._host(zeros), k_size, H2D)
        if v_size <= k_size:
            self._copy(v, k, v_size, D2D)
        else:
            self._copy(v, self._host(zeros), v_size, H2D)

    # -- running with the cache in place -------------------------------------------------------
    def _put(self, name: str, arr, index: int, shape, dtype, group: int) -> None:
        """Send one input to its device buffer (from the card itself when it is there)."""
        dst = self._in[index][0]
        if isinstance(arr, DeviceTensor):
            self._check_input(name, arr, shape, dtype, group)
            self._copy(dst, arr.ptr, arr.nbytes, D2D)
            return
        self._check_input(name, arr, shape, dtype, group)
        arr = np.ascontiguousarray(arr)
        shared = name in SHARED_INPUTS
        src = self._staged.source(name, arr) if shared else None
        if src == dst:
            return  # this very buffer already holds these bytes
        if src is not None:
            self._copy(dst, src, arr.nbytes, D2D)
            return
        self._copy(dst, self._host(arr), arr.nbytes, H2D)
        if shared:
            self._staged.record(name, arr, dst, self)

    def _execute(self, feed: dict, group: int) -> list:
        """Send the fed inputs, run ``group``; return its outputs' (address, shape, dtype)."""
        feeds, results, prefix = self._groups[group]
        self._current()
        for name, arr in feed.items():
            if name not in feeds:
                raise RuntimeFailure(f'group {group} has no input {name}')
            self._put(name, arr, *feeds[name], group)
        self._check_feed(feed, feeds, prefix, group)
        ret = self._lib.axclrtEngineExecute(self._model, self._ctx, group, self._io)
        if ret != 0:
            raise RuntimeFailure(f'the NPU run of group {group} failed (0x{ret & 0xFFFFFFFF:08x})')
        return results

    def _fetch(self, result) -> np.ndarray:
        ptr, shape, dtype = result
        out = np.empty(shape, dtype)
        self._copy(self._host(out), ptr, out.nbytes, D2H)
        return out

    def run(self, feed: dict, group: int) -> list:
        """Run ``group`` with the cache in place; return all outputs on the host (like run)."""
        return [self._fetch(r) for r in self._execute(feed, group)]

    def step(self, feed: dict, group: int, row: int, count: int, fetch: bool = True):
        """Run ``group`` with the cache in place and keep its new K/V rows, on the card.

        Rows [0, count) of ``K_cache_out`` / ``V_cache_out`` are copied device to device to
        cache rows [row, row + count). Returns the hidden ``output``: on the host (a new
        array), or with ``fetch=False`` a ``DeviceTensor`` the next layer's ``step`` takes as
        its ``input`` without a trip over the link.
        """
        results = self._execute(feed, group)
        (k_out, _, _), (v_out, _, _), out = (results[i] for i in self._out_at)
        start, nbytes = row * self.row_bytes, count * self.row_bytes
        if row < 0 or row + count > self.length:
            raise RuntimeFailure(f'cache rows [{row}, {row + count}) outside 0..{self.length}')
        self._copy(self._in[self._k_at][0] + start, k_out, nbytes, D2D)
        self._copy(self._in[self._v_at][0] + start, v_out, nbytes, D2D)
        if fetch:
            return self._fetch(out)
        return DeviceTensor(out[0], out[1], out[2], self)
