"""The emulated NPU: CMM memory with a CPU-cache view and a device view, and the engine.

CMM memory (``AX_SYS_MemAllocCached``) is two copies of every allocation here:

- the *virtual* side (``pVirAddr``), what the CPU reads and writes through its cache;
- the *physical* side (``phyAddr``), what the NPU reads and writes by DMA.

``AX_SYS_MflushCache(phy, vir, size)`` copies that range CPU -> device and
``AX_SYS_MinvalidateCache`` device -> CPU, so a range the host forgets to flush is not seen by the
"NPU", and an output it forgets to invalidate reads stale: the same failures as on the board.
A flush costs a copy of its range, as a cache clean over that range costs time on the board.

The engine runs a model's shape group by reading each input from device memory at the
``phyAddr`` of the IO struct's buffer i, converting bf16 to float32 where the ONNX stand-in
takes float32 (as the NPU computes internally), running onnxruntime, and writing each output
into device memory of output buffer i in the declared dtype. Time spent inside that call is
counted in ``STATS`` so a benchmark can subtract the "NPU" and keep the host's share.
"""

from __future__ import annotations

import bisect
import ctypes
import json
import struct
import threading
import time

import ml_dtypes
import numpy as np

MAGIC = b'AXEMU\x01\n'
BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = {'bfloat16': BF16, 'float32': np.dtype(np.float32), 'uint8': np.dtype(np.uint8),
          'uint32': np.dtype(np.uint32), 'int32': np.dtype(np.int32),
          'uint16': np.dtype(np.uint16), 'int8': np.dtype(np.int8),
          'int16': np.dtype(np.int16)}
ORT_DTYPES = {'tensor(float)': np.dtype(np.float32), 'tensor(uint8)': np.dtype(np.uint8),
              'tensor(uint32)': np.dtype(np.uint32), 'tensor(int32)': np.dtype(np.int32),
              'tensor(int64)': np.dtype(np.int64), 'tensor(bfloat16)': BF16,
              'tensor(float16)': np.dtype(np.float16)}


class Stats:
    """What the emulated hardware did: NPU time and calls, bytes flushed / invalidated."""

    def __init__(self):
        self.reset()

    def reset(self):
        """Zero every counter."""
        self.npu_s = 0.0          # wall time inside the emulated NPU calls
        self.npu_cpu_s = 0.0      # CPU time of the calling thread inside them
        self.npu_calls = 0
        self.flush_bytes = 0
        self.flush_calls = 0
        self.invalidate_bytes = 0
        self.invalidate_calls = 0

    def snapshot(self) -> dict:
        """Return the counters as a dict."""
        return dict(vars(self))


STATS = Stats()


# -- CMM memory -------------------------------------------------------------------------------
class _Block:
    __slots__ = ('phy', 'size', 'vir', 'host', 'dev', 'dev_addr', '_keep')

    def __init__(self, phy: int, size: int, align: int):
        raw = np.zeros(size + align, np.uint8)
        off = (-raw.ctypes.data) % align
        self._keep = raw
        self.host = raw[off:off + size]             # the CPU's (cached) view
        self.vir = self.host.ctypes.data
        self.dev = np.zeros(size, np.uint8)         # what the NPU sees
        self.dev_addr = self.dev.ctypes.data
        self.phy = phy
        self.size = size


class CMM:
    """Allocations by physical address; lookups for flush / invalidate / DMA."""

    def __init__(self):
        self._lock = threading.Lock()
        self._bases: list[int] = []
        self._blocks: list[_Block] = []
        self._next = 0x1_0000_0000

    def alloc(self, size: int, align: int) -> _Block:
        """Allocate ``size`` bytes aligned to ``align`` on both sides."""
        align = max(int(align), 64)
        with self._lock:
            phy = -(-self._next // align) * align
            self._next = phy + size + align
            block = _Block(phy, size, align)
            i = bisect.bisect(self._bases, phy)
            self._bases.insert(i, phy)
            self._blocks.insert(i, block)
            return block

    def free(self, phy: int) -> bool:
        """Release the block that starts at ``phy``."""
        with self._lock:
            i = bisect.bisect_left(self._bases, phy)
            if i < len(self._bases) and self._bases[i] == phy:
                del self._bases[i]
                del self._blocks[i]
                return True
            return False

    def find(self, phy: int, size: int) -> tuple[_Block, int]:
        """Block holding [phy, phy+size) and the offset of phy in it; ValueError if none."""
        i = bisect.bisect(self._bases, phy) - 1
        if i >= 0:
            block = self._blocks[i]
            off = phy - block.phy
            if 0 <= off and off + size <= block.size:
                return block, off
        raise ValueError(f'physical range 0x{phy:x}+{size} is not inside one CMM block')


MEMORY = CMM()


def _sync(phy: int, vir: int, size: int, kind: str) -> int:
    """Copy one range between the CPU view and the device ('flush': to it, 'invalidate': back).

    Returns nonzero, as the SDK does, when phy/vir/size do not lie in one CMM block.
    """
    try:
        block, off = MEMORY.find(phy, size)
    except ValueError:
        return -1
    if vir != block.vir + off:
        return -1
    dev = block.dev_addr + off
    ctypes.memmove(*((dev, vir) if kind == 'flush' else (vir, dev)), size)
    setattr(STATS, f'{kind}_calls', getattr(STATS, f'{kind}_calls') + 1)
    setattr(STATS, f'{kind}_bytes', getattr(STATS, f'{kind}_bytes') + size)
    return 0


def flush(phy: int, vir: int, size: int) -> int:
    """CPU cache -> device for one range (AX_SYS_MflushCache)."""
    return _sync(phy, vir, size, 'flush')


def invalidate(phy: int, vir: int, size: int) -> int:
    """Device -> CPU view for one range (AX_SYS_MinvalidateCache)."""
    return _sync(phy, vir, size, 'invalidate')


# -- models -----------------------------------------------------------------------------------
class TensorInfo:
    """Name, shape, dtype and byte size of one model input or output in one group."""

    __slots__ = ('name', 'shape', 'dtype', 'nbytes')

    def __init__(self, name: str, shape, dtype: str):
        self.name = name
        self.shape = tuple(int(s) for s in shape)
        self.dtype = DTYPES[dtype]
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize


class Group:
    """One shape group: its onnxruntime session and its declared (axmodel) tensors."""

    def __init__(self, onnx_bytes: bytes, inputs: list, outputs: list):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(onnx_bytes, sess_options=opts,
                                            providers=['CPUExecutionProvider'])
        self.inputs = [TensorInfo(**t) for t in inputs]
        self.outputs = [TensorInfo(**t) for t in outputs]
        ort_in = {a.name: ORT_DTYPES[a.type] for a in self.session.get_inputs()}
        self.ort_dtypes = [ort_in[t.name] for t in self.inputs]
        # An input no node reads (the first chunk's dummy cache; everything but `input` in the
        # benchmarks' data-moving stand-ins) cannot change the outputs: it gets a constant
        # array instead of a conversion, so the emulated NPU does not sweep the host's caches.
        import onnx
        graph = onnx.load_model_from_string(onnx_bytes).graph
        read = {name for node in graph.node for name in node.input}
        read |= {o.name for o in graph.output}
        self.unread = [None if t.name in read else np.zeros(t.shape, want)
                       for t, want in zip(self.inputs, self.ort_dtypes)]


class Model:
    """A parsed emulated .axmodel (see axmodel_pack.py for the container format)."""

    def __init__(self, data, name: str = ''):
        data = memoryview(data).cast('B')
        if bytes(data[:len(MAGIC)]) != MAGIC:
            raise ValueError('not an emulated axmodel (bad magic)')
        (hlen,) = struct.unpack_from('<Q', data, len(MAGIC))
        start = len(MAGIC) + 8
        header = json.loads(bytes(data[start:start + hlen]))
        base = start + hlen
        self.name = name
        self.groups = []
        for g in header['groups']:
            off, length = g['onnx']
            self.groups.append(Group(bytes(data[base + off:base + off + length]),
                                     g['inputs'], g['outputs']))

    def run(self, group: int, io) -> int:
        """Run ``group`` on the buffers of an AX_ENGINE_IO_T; 0 on success like the C API."""
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            g = self.groups[group]
        except IndexError:
            return -1
        if io.nInputSize < len(g.inputs) or io.nOutputSize < len(g.outputs):
            return -1
        feed = {}
        for i, (spec, want, unread) in enumerate(zip(g.inputs, g.ort_dtypes, g.unread)):
            buf = io.pInputs[i]
            if buf.nSize < spec.nbytes:
                return -1
            if unread is not None:
                feed[spec.name] = unread
                continue
            block, off = MEMORY.find(buf.phyAddr, spec.nbytes)
            x = block.dev[off:off + spec.nbytes].view(spec.dtype).reshape(spec.shape)
            feed[spec.name] = x.astype(want) if x.dtype != want else x
        outs = g.session.run(None, feed)
        for i, (spec, y) in enumerate(zip(g.outputs, outs)):
            buf = io.pOutputs[i]
            if buf.nSize < spec.nbytes or tuple(y.shape) != spec.shape:
                return -1
            block, off = MEMORY.find(buf.phyAddr, spec.nbytes)
            block.dev[off:off + spec.nbytes] = np.ascontiguousarray(
                y.astype(spec.dtype, copy=False)).reshape(-1).view(np.uint8)
        STATS.npu_s += time.perf_counter() - t0
        STATS.npu_cpu_s += time.thread_time() - c0
        STATS.npu_calls += 1
        return 0
