"""The "NPU" behind the stub libax_engine.so: onnxruntime on the ONNX stand-in graphs.

``install()`` (run at interpreter start by ``sitecustomize`` when ``AX_STUB_NPU=1``, which
scripts/with_npu_stub.sh sets) opens the stub libraries with cffi and registers five Python
callbacks through the stub-only ``AX_STUB_SetNpu``: load a model's bytes (the container of
axmodel_pack.py), unload it, count its shape groups, give a group's ``AX_ENGINE_IO_INFO_T``,
and run a group. The C side resolves every IO buffer by its ``phyAddr`` to the DEVICE side of
CMM before calling ``run``, so this code never sees what the CPU wrote but did not flush.

A run converts each input from its declared dtype (bf16 on the board) to what the ONNX graph
takes (float32), runs onnxruntime (one thread, one session per shape group) and writes each
output in its declared dtype to device memory. An input no node of the graph reads gets a
constant array (it cannot change the outputs; the benchmarks' data-moving stand-ins have many).
``STATS`` counts the time spent in runs, so a benchmark can subtract the "NPU" and keep the
host's share; ``cache_stats()`` gives the bytes flushed / invalidated (counted in libax_sys),
``link_stats()`` the card's bytes and calls over the link (counted in libaxcl_rt's
axclrtMemcpy). The same callbacks serve the board's libax_engine and the card's libaxcl_rt.
"""

from __future__ import annotations

import ctypes.util
import sys
import time
import traceback

CDEF = """
typedef int AX_S32; typedef unsigned int AX_U32; typedef unsigned long long int AX_U64;
typedef unsigned char AX_U8; typedef signed char AX_S8; typedef char AX_CHAR; typedef void AX_VOID;
typedef struct { int eColorSpace; AX_U64 u64Reserved[18]; } AX_ENGINE_IO_META_EX_T;
typedef struct {
    AX_CHAR *pName; AX_S32 *pShape; AX_U8 nShapeSize; int eLayout; int eMemoryType;
    int eDataType; AX_ENGINE_IO_META_EX_T *pExtraMeta; AX_U32 nSize; AX_U32 nQuantizationValue;
    AX_S32 *pStride; AX_U64 u64Reserved[9];
} AX_ENGINE_IO_META_T;
typedef struct {
    AX_ENGINE_IO_META_T *pInputs; AX_U32 nInputSize; AX_ENGINE_IO_META_T *pOutputs;
    AX_U32 nOutputSize; AX_U32 nMaxBatchSize; int bDynamicBatchSize; AX_U64 u64Reserved[11];
} AX_ENGINE_IO_INFO_T;
typedef struct {
    AX_U64 phyAddr; AX_VOID *pVirAddr; AX_U32 nSize; AX_S32 *pStride; AX_U8 nStrideSize;
    AX_U64 u64Reserved[11];
} AX_ENGINE_IO_BUFFER_T;
typedef struct {
    AX_ENGINE_IO_BUFFER_T *pInputs; AX_U32 nInputSize; AX_ENGINE_IO_BUFFER_T *pOutputs;
    AX_U32 nOutputSize; AX_U32 nBatchSize; void *pIoSetting; AX_U64 u64Reserved[10];
} AX_ENGINE_IO_T;
AX_S32 AX_SYS_Init(void);
AX_S32 AX_SYS_MemAllocCached(AX_U64 *phyaddr, void **pviraddr, AX_U32 size, AX_U32 align,
                             const AX_S8 *token);
AX_S32 AX_SYS_MflushCache(AX_U64 phyaddr, void *pviraddr, AX_U32 size);
AX_S32 AX_SYS_MinvalidateCache(AX_U64 phyaddr, void *pviraddr, AX_U32 size);
void AX_STUB_GetStats(AX_U64 out[4]);
void AX_STUB_ResetStats(void);
AX_S32 AX_ENGINE_Init(void *attr);
AX_S32 AX_ENGINE_CreateHandleV2(uint64_t **pHandle, const void *pData, AX_U32 nDataSize,
                                void *pExtraParam);
AX_S32 AX_ENGINE_DestroyHandle(uint64_t *nHandle);
AX_S32 AX_ENGINE_CreateContextV2(uint64_t *nHandle, uint64_t **pContext);
AX_S32 AX_ENGINE_GetGroupIOInfoCount(uint64_t *nHandle, AX_U32 *pCount);
AX_S32 AX_ENGINE_GetGroupIOInfo(uint64_t *nHandle, AX_U32 nIndex, AX_ENGINE_IO_INFO_T **pIO);
AX_S32 AX_ENGINE_RunGroupIOSync(uint64_t *h, uint64_t *c, AX_U32 nIndex, AX_ENGINE_IO_T *pIO);
AX_S32 AX_ENGINE_RunSyncV2(uint64_t *h, uint64_t *c, AX_ENGINE_IO_T *pIO);
typedef AX_S32 (*AX_STUB_LOAD_FN)(const void *data, AX_U32 size, AX_U64 *model);
typedef AX_S32 (*AX_STUB_UNLOAD_FN)(AX_U64 model);
typedef AX_S32 (*AX_STUB_COUNT_FN)(AX_U64 model, AX_U32 *count);
typedef AX_S32 (*AX_STUB_INFO_FN)(AX_U64 model, AX_U32 group, AX_ENGINE_IO_INFO_T **info);
typedef AX_S32 (*AX_STUB_RUN_FN)(AX_U64 model, AX_U32 group, void **inputs, void **outputs);
void AX_STUB_SetNpu(AX_STUB_LOAD_FN load, AX_STUB_UNLOAD_FN unload, AX_STUB_COUNT_FN count,
                    AX_STUB_INFO_FN info, AX_STUB_RUN_FN run);
void AXCL_STUB_SetNpu(AX_STUB_LOAD_FN load, AX_STUB_UNLOAD_FN unload, AX_STUB_COUNT_FN count,
                      AX_STUB_INFO_FN info, AX_STUB_RUN_FN run);
void AXCL_STUB_GetLinkStats(uint64_t out[7]);
void AXCL_STUB_ResetLinkStats(void);
"""

# AX_ENGINE_DATA_TYPE_T codes (ax_engine_type.h, as pyaxengine's cdef declares them).
DTYPE_CODES = {'uint8': 1, 'uint16': 2, 'float32': 3, 'int16': 4, 'int8': 5, 'int32': 6,
               'uint32': 7, 'bfloat16': 9}


class Stats:
    """What the stub NPU did: wall and CPU time inside runs, and the number of runs."""

    def __init__(self):
        self.reset()

    def reset(self):
        """Zero the counters (and libax_sys's cache maintenance counters)."""
        self.npu_s = 0.0
        self.npu_cpu_s = 0.0
        self.npu_calls = 0
        if _state.get('sys'):
            _state['sys'].AX_STUB_ResetStats()
        if _state.get('card'):
            _state['card'].AXCL_STUB_ResetLinkStats()


_state: dict = {}
STATS = Stats()


def on_card() -> bool:
    """Tell whether only the card's libaxcl_rt is present (``with_npu_stub.sh --card``)."""
    return _state.get('card') is not None and _state.get('engine') is None


def link_stats() -> dict:
    """Return the card's axclrtMemcpy counters and runs since the last reset.

    As AX_STUB_LINK_STATS's JSON: host_to_device / device_to_host / device_to_device
    {bytes, calls}, runs.
    """
    out = _state['ffi'].new('uint64_t[7]')
    _state['card'].AXCL_STUB_GetLinkStats(out)
    return {'host_to_device': {'bytes': out[0], 'calls': out[1]},
            'device_to_host': {'bytes': out[2], 'calls': out[3]},
            'device_to_device': {'bytes': out[4], 'calls': out[5]}, 'runs': out[6]}


def cache_stats() -> dict:
    """Bytes and calls of AX_SYS_MflushCache / AX_SYS_MinvalidateCache since the last reset.

    On the card: the link counters (``link_stats``) instead.
    """
    if not _state.get('sys'):
        return {'link': link_stats()}
    out = _state['ffi'].new('AX_U64[4]')
    _state['sys'].AX_STUB_GetStats(out)
    return {'flush_bytes': out[0], 'flush_calls': out[1], 'invalidate_bytes': out[2],
            'invalidate_calls': out[3]}


class _Tensor:
    __slots__ = ('name', 'shape', 'dtype', 'nbytes')

    def __init__(self, name, shape, dtype):
        import numpy as np
        from axmodel_pack import numpy_dtype
        self.name, self.shape = name, tuple(int(s) for s in shape)
        self.dtype = numpy_dtype(dtype)
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize


class _Group:
    """One shape group: its onnxruntime session, declared tensors and IO info struct."""

    def __init__(self, ffi, onnx_bytes: bytes, inputs: list, outputs: list):
        import numpy as np
        import onnx
        import onnxruntime as ort
        from axmodel_pack import numpy_dtype
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(onnx_bytes, sess_options=opts,
                                            providers=['CPUExecutionProvider'])
        self.inputs = [_Tensor(t['name'], t['shape'], t['dtype']) for t in inputs]
        self.outputs = [_Tensor(t['name'], t['shape'], t['dtype']) for t in outputs]
        want = {a.name: numpy_dtype(a.type[len('tensor('):-1]) for a in self.session.get_inputs()}
        self.ort_dtypes = [want[t.name] for t in self.inputs]
        graph = onnx.load_model_from_string(onnx_bytes).graph
        read = {name for node in graph.node for name in node.input}
        read |= {o.name for o in graph.output}
        self.unread = [None if t.name in read else np.zeros(t.shape, d)
                       for t, d in zip(self.inputs, self.ort_dtypes)]
        self._keep = []
        self.info = ffi.new('AX_ENGINE_IO_INFO_T *')
        self.info.pInputs, self.info.nInputSize = self._metas(ffi, inputs), len(inputs)
        self.info.pOutputs, self.info.nOutputSize = self._metas(ffi, outputs), len(outputs)
        self.info.nMaxBatchSize = 1

    def _metas(self, ffi, tensors):
        metas = ffi.new('AX_ENGINE_IO_META_T[]', max(1, len(tensors)))
        for m, t in zip(metas, tensors):
            name = ffi.new('char[]', t['name'].encode())
            shape = ffi.new('AX_S32[]', [int(s) for s in t['shape']])
            self._keep += [name, shape]
            m.pName, m.pShape, m.nShapeSize = name, shape, len(t['shape'])
            m.eDataType = DTYPE_CODES[t['dtype']]
            m.nSize = _Tensor(t['name'], t['shape'], t['dtype']).nbytes
        self._keep.append(metas)
        return metas

    def run(self, ffi, ins, outs) -> int:
        import numpy as np
        feed = {}
        for i, (t, want, unread) in enumerate(zip(self.inputs, self.ort_dtypes, self.unread)):
            if unread is not None:
                feed[t.name] = unread
                continue
            x = np.frombuffer(ffi.buffer(ins[i], t.nbytes), t.dtype).reshape(t.shape)
            feed[t.name] = x.astype(want) if x.dtype != want else x
        for i, (t, y) in enumerate(zip(self.outputs, self.session.run(None, feed))):
            if tuple(y.shape) != t.shape:
                print(f'npu stub: {t.name} came out {y.shape}, declared {t.shape}',
                      file=sys.stderr)
                return -1
            y = np.ascontiguousarray(y.astype(t.dtype, copy=False))
            ffi.memmove(outs[i], y.reshape(-1).view(np.uint8), t.nbytes)
        return 0


class _Model:
    def __init__(self, ffi, data: bytes):
        from axmodel_pack import read_container
        self.groups = [_Group(ffi, onnx_bytes, g['inputs'], g['outputs'])
                       for onnx_bytes, g in read_container(data)]


def _guarded(fn):
    """Keep exceptions out of C: a failing callback prints the traceback and returns -1."""
    def wrapper(*args):
        try:
            return fn(*args)
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            return -1
    return wrapper


def install() -> bool:
    """Open the stub libraries and register the NPU callbacks; False if they are not found."""
    if _state:
        return True
    import cffi
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    # The board (libax_sys + libax_engine) and / or the M.2 card (libaxcl_rt), whichever the
    # library path has: the NPU is registered with each.
    sys_path, engine_path, card_path = (ctypes.util.find_library(n)
                                        for n in ('ax_sys', 'ax_engine', 'axcl_rt'))
    board = bool(sys_path and engine_path)
    if not board and not card_path:
        return False
    slib, elib = (ffi.dlopen(sys_path), ffi.dlopen(engine_path)) if board else (None, None)
    clib = ffi.dlopen(card_path) if card_path else None
    models: dict = {}
    counter = [0]

    @_guarded
    def load(data, size, out):
        counter[0] += 1
        models[counter[0]] = _Model(ffi, bytes(ffi.buffer(data, size)))
        out[0] = counter[0]
        return 0

    @_guarded
    def unload(model):
        models.pop(model, None)
        return 0

    @_guarded
    def count(model, out):
        out[0] = len(models[model].groups)
        return 0

    @_guarded
    def info(model, group, out):
        groups = models[model].groups
        if group >= len(groups):
            return -1
        out[0] = groups[group].info
        return 0

    @_guarded
    def run(model, group, ins, outs):
        groups = models[model].groups
        if group >= len(groups):
            return -1
        t0, c0 = time.perf_counter(), time.thread_time()
        ret = groups[group].run(ffi, ins, outs)
        STATS.npu_s += time.perf_counter() - t0
        STATS.npu_cpu_s += time.thread_time() - c0
        STATS.npu_calls += 1
        return ret

    callbacks = [ffi.callback(f'AX_STUB_{kind}_FN', fn) for kind, fn in
                 (('LOAD', load), ('UNLOAD', unload), ('COUNT', count), ('INFO', info),
                  ('RUN', run))]
    if elib is not None:
        elib.AX_STUB_SetNpu(*callbacks)
    if clib is not None:
        clib.AXCL_STUB_SetNpu(*callbacks)
    _state.update(ffi=ffi, sys=slib, engine=elib, card=clib, callbacks=callbacks,
                  models=models)
    return True


def libraries():
    """(ffi, libax_sys, libax_engine) as opened by ``install`` (for the legacy runner)."""
    if not install() or _state['engine'] is None:
        raise ImportError('the stub NPU libraries are not on LD_LIBRARY_PATH')
    return _state['ffi'], _state['sys'], _state['engine']


__all__ = ['install', 'libraries', 'STATS', 'cache_stats', 'link_stats', 'on_card']
