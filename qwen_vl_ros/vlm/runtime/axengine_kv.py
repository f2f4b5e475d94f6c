"""The KV cache inside pyaxengine's own input buffers: one row written per layer per token.

Why: pyaxengine's ``run`` memmoves every fed input into the session's persistent CMM input
buffer and flushes the WHOLE buffer (``AX_SYS_MflushCache`` over ``nSize``, sized to the largest
shape group), then invalidates and copies every output buffer whole. Feeding the (1, 1023, 256)
bf16 K and V caches of 36 layers that way moves ~37 MB and flushes ~90 MB per token. AXERA's C++
runtime keeps the cache in the decode group's input buffers instead and writes one 256-wide row
per layer per step; this module does the same from Python.

What it uses of pyaxengine (axengine/_axe.py, AXEngineSession, on-board NPU provider):

- ``sess._sess``: the provider session behind ``InferenceSession``;
- ``_io``: the cffi ``AX_ENGINE_IO_T *`` whose ``pInputs[i]`` / ``pOutputs[i]`` hold
  ``phyAddr``, ``pVirAddr`` and ``nSize`` of ONE persistent buffer per input / output index,
  shared by all shape groups (sized to the largest);
- ``_handle``, ``_context``, ``_shape_count``, ``get_inputs(g)``, ``get_outputs(g)``;
- the module globals ``engine_cffi`` (``buffer``, ``cast``), ``sys_lib``
  (``AX_SYS_MflushCache``, ``AX_SYS_MinvalidateCache``) and ``engine_lib``
  (``AX_ENGINE_RunGroupIOSync``, or ``AX_ENGINE_RunSyncV2`` for a one-group model).

Layout fact it relies on: every prefill group's ``K_cache`` (1, H_g, kv) is a row prefix of the
decode group's (1, L, kv) in the same buffer, so one buffer holds the cache for decode and for
chunked prefill alike (a group whose ``K_cache`` is not such a prefix, e.g. the first chunk's
dummy, gets it fed like any other input: it lands on the first rows, which that chunk then
writes anew). Inputs are written at offset 0 and only their own bytes flushed; outputs are
invalidated over their own bytes only.

At attach, and only then:

- the K and V buffers are zeroed and flushed whole. pyaxengine never zeroes its CMM buffers
  (``AX_SYS_MemAllocCached``), and the additive -65536 mask does not cancel NaN, Inf or large
  garbage in a never-written row (bf16 0x5A5A is ~1.5e16); AXERA's C++ runner memsets every
  buffer it allocates (ax-llm, src/runner/ax_model_runner/ax_model_runner_ax650.cpp,
  ``prepare_io_with_alloc``). Rows from earlier requests are finite and stay: the masks block them;
- one flush of an interior range (a cache line at row 1) is tried: no AXERA code flushes at
  phy + offset as ``step`` does, so a driver that refuses it gets the plain ``run`` (attach
  returns None, the reason logged) instead of every request failing.

The object keeps the pyaxengine session it was attached to: the handle, context and IO buffers
it uses belong to that session and die with it.

The M.2 card's ``AXCLRTExecutionProvider`` keeps its buffers in card memory: axclrt_kv.py does
the same there with ``axclrtMemcpy`` (``attach`` below picks by provider; the layout checks,
feed checks and outputs-by-name are shared, in ``KVBuffers``). Anything else (the older
``load_from_model`` wheel, a pyaxengine whose internals differ) gets no in-buffer cache:
``attach`` returns None, with the reason in the log, and the decoder keeps its host arrays and
the plain ``run``. ``QWEN_VL_KV_IN_BUFFER=0`` turns the path off.
"""

from __future__ import annotations

import logging
import os
import sys

import numpy as np

from ..errors import RuntimeFailure

log = logging.getLogger('qwen_vl_ros')
ENV_SWITCH = 'QWEN_VL_KV_IN_BUFFER'
LAYER_OUTPUTS = ('K_cache_out', 'V_cache_out', 'output')  # CONTRACT.md, taken by name
CACHE_LINE = 64  # flush / invalidate whole cache lines (Cortex-A55)


def enabled() -> bool:
    """Return False when the environment turns the in-buffer cache off."""
    return os.environ.get(ENV_SWITCH, '1').strip().lower() not in ('0', 'false', 'no', 'off')


def _native(sess):
    """Return (provider session, ffi, engine lib, sys lib) of a pyaxengine session, or why not."""
    inner = getattr(sess, '_sess', sess)
    module = sys.modules.get(type(inner).__module__)

    def find(attr, name):  # instance attribute (older releases) or module global (current)
        return getattr(inner, attr, None) or getattr(module, name, None)

    ffi = find('_engine_ffi', 'engine_cffi')
    elib = find('_engine_lib', 'engine_lib')
    slib = find('_sys_lib', 'sys_lib')
    missing = [n for n in ('_io', '_handle', '_context', '_shape_count', 'get_inputs',
                           'get_outputs') if not hasattr(inner, n)]
    if missing or ffi is None or elib is None or slib is None:
        return f'{type(inner).__name__} lacks {missing or "engine_cffi/engine_lib/sys_lib"}'
    for lib, name in ((slib, 'AX_SYS_MflushCache'), (slib, 'AX_SYS_MinvalidateCache'),
                      (elib, 'AX_ENGINE_RunGroupIOSync' if inner._shape_count > 1
                       else 'AX_ENGINE_RunSyncV2')):
        if getattr(lib, name, None) is None:
            return f'the runtime library has no {name}'
    return inner, ffi, elib, slib


def attach(session, decode_group: int):
    """Return the in-buffer KV cache of a pyaxengine session (board or card), or None."""
    inner = getattr(session, '_sess', session)
    if type(inner).__name__ == 'AXCLRTSession':
        from .axclrt_kv import DeviceKV
        return DeviceKV.attach(session, decode_group)
    return InBufferKV.attach(session, decode_group)


class KVBuffers:
    """What the board's and the card's in-buffer caches share.

    The layout read from the session's shape groups, the feed checks, the outputs taken by
    name, and ``attach``.

    A subclass gives ``_native(session)`` (what it needs of pyaxengine's internals, or a str
    saying what is missing) and builds itself from that.
    """

    # Rows stay in the session's buffers between requests (only the first chunk's dummy feed
    # lands on rows it then rewrites), so a prefill may resume on a kept prompt prefix.
    keeps_rows = True
    where = 'in the buffers'  # for the log: where the rows live

    @staticmethod
    def _native(session):
        raise NotImplementedError

    @classmethod
    def attach(cls, session, decode_group: int):
        """Return the in-buffer cache of a pyaxengine session, or None to use host arrays."""
        if not enabled():
            return None
        native = cls._native(session)
        if isinstance(native, str):
            log.info('KV cache on the host (whole caches fed per step): %s', native)
            return None
        try:
            return cls(session, *native, decode_group)
        except Exception as e:  # noqa: BLE001 (any surprise in the internals: use plain run)
            log.warning('KV cache on the host (whole caches fed per step): %s: %s',
                        type(e).__name__, e)
            return None

    def _layout(self, inner, decode_group: int, n_inputs: int, n_outputs: int):
        """Read names, cache shape and outputs by name; return (inputs, outputs) per group.

        Raises ValueError when the groups disagree, the IO count differs from the session's
        buffers, or a contract output (CONTRACT.md) is missing.
        """
        groups = range(inner._shape_count)
        ins = {g: list(inner.get_inputs(g)) for g in groups}
        outs = {g: list(inner.get_outputs(g)) for g in groups}
        names = [a.name for a in ins[decode_group]]
        if any([a.name for a in ins[g]] != names for g in groups):
            raise ValueError('shape groups order their inputs differently')
        if n_inputs != len(names) or n_outputs != len(outs[decode_group]):
            raise ValueError('the IO buffers do not match the inputs / outputs')
        self._k_at, self._v_at = names.index('K_cache'), names.index('V_cache')
        dec = ins[decode_group][self._k_at]
        _, self.length, self.width = (int(s) for s in dec.shape)
        self.dtype = np.dtype(dec.dtype)
        self.row_bytes = self.width * self.dtype.itemsize
        out_names = [a.name for a in outs[decode_group]]
        missing = [n for n in LAYER_OUTPUTS if n not in out_names]
        if missing or any([a.name for a in outs[g]] != out_names for g in groups):
            raise ValueError(f'layer outputs {out_names} lack {missing} or differ by group')
        self._out_at = [out_names.index(n) for n in LAYER_OUTPUTS]
        return ins, outs

    def _prefix(self, arg) -> bool:
        """Tell whether a group's K_cache (1, H, kv) is a row prefix of the decode cache."""
        return (len(arg.shape) == 3 and tuple(arg.shape[::2]) == (1, self.width)
                and arg.shape[1] <= self.length and np.dtype(arg.dtype) == self.dtype)

    @staticmethod
    def _check_feed(feed: dict, feeds: dict, prefix: bool, group: int) -> None:
        """Refuse a feed that lacks inputs (K/V may be left out on a prefix group)."""
        if len(feed) != len(feeds) and not (prefix and len(feed) + 2 == len(feeds)
                                            and 'K_cache' not in feed
                                            and 'V_cache' not in feed):
            raise RuntimeFailure(f'group {group} needs inputs {sorted(set(feeds) - set(feed))}')

    @staticmethod
    def _check_input(name: str, arr, shape, dtype, group: int) -> None:
        if arr.shape != shape or arr.dtype != dtype:
            raise RuntimeFailure(f'input {name} of group {group} must be {shape} {dtype}, '
                                 f'got {arr.shape} {arr.dtype}')


class _Buffer:
    """One persistent CMM buffer of the session: a writable numpy view plus its addresses."""

    __slots__ = ('phy', 'vir', 'size', 'view')

    def __init__(self, ffi, buf):
        self.phy = int(buf.phyAddr)
        self.vir = int(ffi.cast('uintptr_t', buf.pVirAddr))
        self.size = int(buf.nSize)
        self.view = np.frombuffer(ffi.buffer(buf.pVirAddr, self.size), np.uint8)


class InBufferKV(KVBuffers):
    """One decoder layer's K/V cache, kept in its session's ``K_cache``/``V_cache`` buffers.

    ``step(feed, group, row, count)`` runs a shape group with ``K_cache``/``V_cache`` taken
    from the buffers when the feed leaves them out (they must be fed for a group whose cache
    input is not a prefix, i.e. the first chunk's dummy), stores the new K/V rows at cache rows
    [row, row + count) and returns the hidden output. Outputs are taken by name (CONTRACT.md):
    ``K_cache_out``, ``V_cache_out``, ``output``, in whatever order the model has them.
    """

    where = 'in the CMM input buffers'
    _native = staticmethod(_native)

    def __init__(self, session, inner, ffi, elib, slib, decode_group: int):
        self._session = session  # owns the handle, context and buffers used below
        self._ffi, self._slib = ffi, slib
        self._handle, self._context, self._io = inner._handle, inner._context, inner._io
        self._multi = inner._shape_count > 1
        self._run_fn = elib.AX_ENGINE_RunGroupIOSync if self._multi else elib.AX_ENGINE_RunSyncV2
        io = self._io[0]
        ins, outs = self._layout(inner, decode_group, io.nInputSize, io.nOutputSize)
        self._in = [_Buffer(ffi, io.pInputs[i]) for i in range(io.nInputSize)]
        self._out = [_Buffer(ffi, io.pOutputs[i]) for i in range(io.nOutputSize)]
        k_at, v_at = self._k_at, self._v_at
        for at in (k_at, v_at):
            if self._in[at].size < self.length * self.row_bytes:
                raise ValueError('a cache buffer is smaller than the decode group cache')
        self._k = self._rows(self._in[k_at])
        self._v = self._rows(self._in[v_at])
        self._zero_and_probe(k_at, v_at)
        # Per group: for each input, a typed view of its buffer and the flush arguments of
        # exactly its bytes; for each output, the same for invalidating and copying out.
        self._groups = {}
        for g in ins:
            feeds = {a.name: self._slot(self._in[i], a) for i, a in enumerate(ins[g])}
            results = [self._slot(self._out[i], a) for i, a in enumerate(outs[g])]
            self._groups[g] = (feeds, results, self._prefix(ins[g][k_at]))

    def _zero_and_probe(self, k_at: int, v_at: int) -> None:
        """Zero and flush the K/V buffers whole; try one interior flush (see the module doc)."""
        flush = self._slib.AX_SYS_MflushCache
        for at in (k_at, v_at):
            buf = self._in[at]
            buf.view[:] = 0
            if flush(buf.phy, self._ffi.cast('void *', buf.vir), buf.size) != 0:
                raise RuntimeFailure(f'the driver refuses to flush a whole K/V buffer '
                                     f'(0x{buf.phy:x}+{buf.size})')
        buf = self._in[k_at]
        at = -(-self.row_bytes // CACHE_LINE) * CACHE_LINE
        if at + CACHE_LINE <= buf.size:
            ret = flush(buf.phy + at, self._ffi.cast('void *', buf.vir + at), CACHE_LINE)
            if ret != 0:
                raise RuntimeFailure(f'the driver refuses a flush inside a buffer '
                                     f'(AX_SYS_MflushCache at +{at} returned {ret}), which '
                                     f'writing one cache row per step needs')

    def _slot(self, buf: _Buffer, arg) -> tuple:
        """(typed view of the tensor at offset 0, phy, vir pointer, bytes to sync) of one I/O."""
        shape, dtype = tuple(int(s) for s in arg.shape), np.dtype(arg.dtype)
        n = int(np.prod(shape)) * dtype.itemsize
        if n > buf.size:
            raise ValueError(f'{arg.name} needs {n} bytes, its buffer has {buf.size}')
        span = min(buf.size, -(-n // CACHE_LINE) * CACHE_LINE)
        view = buf.view[:n].view(dtype).reshape(shape)
        return view, buf.phy, self._ffi.cast('void *', buf.vir), span

    def _rows(self, buf: _Buffer) -> np.ndarray:
        return buf.view[:self.length * self.row_bytes].view(self.dtype).reshape(
            self.length, self.width)

    def clear(self) -> None:
        """Zero every cache row and flush it (after a run that may have written NaN rows)."""
        self._k[...] = 0
        self._v[...] = 0
        self._flush_rows(0, self.length)

    # -- running with the cache in place -------------------------------------------------------
    def _sync(self, fn, buf: _Buffer, start: int, size: int) -> None:
        """Flush or invalidate [start, start+size) of ``buf``, widened to whole cache lines."""
        lo = start - start % CACHE_LINE
        hi = min(buf.size, -(-(start + size) // CACHE_LINE) * CACHE_LINE)
        if fn(buf.phy + lo, self._ffi.cast('void *', buf.vir + lo), hi - lo) != 0:
            raise RuntimeFailure(f'cache maintenance failed on 0x{buf.phy + lo:x}+{hi - lo}')

    def _flush_rows(self, row: int, count: int) -> None:
        """Make cache rows [row, row + count) of K and V visible to the NPU."""
        flush, start, size = self._slib.AX_SYS_MflushCache, row * self.row_bytes, \
            count * self.row_bytes
        self._sync(flush, self._in[self._k_at], start, size)
        self._sync(flush, self._in[self._v_at], start, size)

    def _execute(self, feed: dict, group: int) -> list:
        """Copy the fed inputs in (flushing their bytes), run ``group``; return its outputs."""
        feeds, results, prefix = self._groups[group]
        flush = self._slib.AX_SYS_MflushCache
        for name, arr in feed.items():
            view, phy, vir, span = feeds[name]
            self._check_input(name, arr, view.shape, view.dtype, group)
            view[...] = arr
            if flush(phy, vir, span) != 0:
                raise RuntimeFailure(f'cache flush failed on input {name}')
        self._check_feed(feed, feeds, prefix, group)
        if self._multi:
            ret = self._run_fn(self._handle[0], self._context[0], group, self._io)
        else:
            ret = self._run_fn(self._handle[0], self._context[0], self._io)
        if ret != 0:
            raise RuntimeFailure(f'the NPU run of group {group} failed ({ret})')
        invalidate = self._slib.AX_SYS_MinvalidateCache
        for _, phy, vir, span in results:
            if invalidate(phy, vir, span) != 0:
                raise RuntimeFailure('cache invalidate failed on an output')
        return [view for view, _, _, _ in results]

    def run(self, feed: dict, group: int) -> list:
        """Run ``group`` with the cache in place; return copies of all outputs (like run)."""
        return [out.copy() for out in self._execute(feed, group)]

    def step(self, feed: dict, group: int, row: int, count: int,
             fetch: bool = True) -> np.ndarray:
        """Run ``group`` with the cache in place and keep its new K/V rows.

        Rows [0, count) of ``K_cache_out`` / ``V_cache_out`` go to cache rows
        [row, row + count) (written and flushed, nothing else moves); returns a copy of the
        hidden ``output`` (CMM is host memory here: ``fetch`` changes nothing).
        """
        outs = self._execute(feed, group)
        k_out, v_out, out = (outs[i] for i in self._out_at)
        self._k[row:row + count] = k_out[0, :count]
        self._v[row:row + count] = v_out[0, :count]
        self._flush_rows(row, count)
        return out.copy()
