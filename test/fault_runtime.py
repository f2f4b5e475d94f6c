"""A fault-injecting wrapper around the real onnxruntime sessions (tests only).

Each ``onnxruntime.InferenceSession`` behind an OnnxSession is wrapped; a run passes straight
through to it unless a fault of the plan is due, which then

- ``raise``: raises onnxruntime's own RuntimeException (the real OnnxSession turns it into a
  RuntimeFailure, as for any onnxruntime error);
- ``nan`` / ``inf``: runs the model and returns its floating-point outputs filled with NaN / +Inf;
- ``hang``: never returns (until ``plan.release`` is set: in-process tests let it go);
- ``delay``: sleeps ``seconds`` before the real run (a slow NPU).

Where: ``role`` 'vision', 'layer' (with ``layer`` index, None = any) or 'post'; ``step`` 0 = the
prompt's prefill, k >= 1 = the k-th decode step, None = any (vision runs before step 0 and
ignores it). A fault fires ``times`` times (0 = forever), then is spent.

In-process: ``wrap_pipeline(pipe, plan)``. In a node process: ``install(plan)`` before the
model loads (test/fault_node.py does it); its plan then comes from the JSON file named by
QVR_FAULT_PLAN, taken (renamed away) at the start of each request, so a test arms faults by
writing that file and the next request after a fault runs clean. ``install(plan,
load_delay_s)`` also makes the model load start that many seconds late (an NPU whose models
take long to load; QVR_FAULT_LOAD_DELAY_S in fault_node.py).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

ENV_PLAN = 'QVR_FAULT_PLAN'
KINDS = ('raise', 'nan', 'inf', 'hang', 'delay')
ROLES = ('vision', 'layer', 'post')


@dataclass
class Fault:
    kind: str
    role: str = 'layer'
    layer: int | None = None
    step: int | None = None
    times: int = 1
    seconds: float = 0.0

    def __post_init__(self):
        assert self.kind in KINDS and self.role in ROLES, self

    def matches(self, role: str, layer: int | None, step: int) -> bool:
        return (self.role == role and (self.layer is None or self.layer == layer)
                and (self.step is None or role == 'vision' or self.step == step))


class FaultPlan:
    """The faults to inject, the request's current step, and what fired (``fired``)."""

    def __init__(self, *faults: Fault, path: str | None = None):
        self.faults = list(faults)
        self.path = path
        self.step = 0
        self.fired: list = []           # (kind, role, layer, step) of each injected fault
        self.release = threading.Event()
        self._lock = threading.Lock()

    def arm(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def _take_file(self) -> None:
        """Arm the faults of the plan file, if there is one (renamed away: used once)."""
        if not self.path:
            return
        taken = self.path + '.taken'
        try:
            os.replace(self.path, taken)
        except FileNotFoundError:
            return
        with open(taken) as f:
            self.arm(*(Fault(**d) for d in json.load(f)))

    def on_call(self, role: str, layer: int | None, decode: bool) -> Fault | None:
        """Return the fault due for this call, if any.

        Layer 0 drives the step count; the plan file is taken at a request's start.
        """
        if role == 'vision' or (role == 'layer' and layer == 0 and not decode):
            if role == 'layer':
                self.step = 0
            self._take_file()
        elif role == 'layer' and layer == 0:
            self.step += 1
        with self._lock:
            for fault in self.faults:
                if fault.matches(role, layer, self.step):
                    if fault.times > 0:
                        fault.times -= 1
                        if fault.times == 0:
                            self.faults.remove(fault)
                    self.fired.append((fault.kind, role, layer, self.step))
                    return fault
        return None


class FaultySession:
    """Stands in for one onnxruntime.InferenceSession; everything else is passed through."""

    def __init__(self, inner, plan: FaultPlan, role: str, layer: int | None, decode: bool):
        self._inner = inner
        self._plan = plan
        self._where = (role, layer, decode)

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def run(self, output_names, feed, run_options=None):
        role, layer, decode = self._where
        fault = self._plan.on_call(role, layer, decode)
        if fault is None:
            return self._inner.run(output_names, feed, run_options)
        where = f'{role}' + (f' {layer}' if layer is not None else '') + \
            f' at step {self._plan.step}'
        # the node test waits for this line before it queues more requests
        print(f'fault_runtime: {fault.kind} in {where}', file=sys.stderr, flush=True)
        if fault.kind == 'raise':
            from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException
            raise RuntimeException(f'injected fault in {where}: device error')
        if fault.kind == 'hang':
            self._plan.release.wait()
        if fault.kind == 'delay':
            time.sleep(fault.seconds)
        outputs = self._inner.run(output_names, feed, run_options)
        if fault.kind in ('nan', 'inf'):
            value = np.nan if fault.kind == 'nan' else np.inf
            outputs = [np.full_like(o, value) if _is_float(o) else o for o in outputs]
        return outputs


def _is_float(a: np.ndarray) -> bool:
    return a.dtype.kind == 'f' or a.dtype.name == 'bfloat16'


def wrap_session(session, plan: FaultPlan, role: str, layer: int | None = None):
    """Wrap every onnxruntime session (one per shape group) of an OnnxSession, in place."""
    for group, (inner, ins, outs) in list(session._sessions.items()):
        decode = role == 'layer' and any(
            s.name == 'indices' and int(np.prod(s.shape)) == 1 for s in ins)
        session._sessions[group] = (FaultySession(inner, plan, role, layer, decode), ins, outs)
    return session


def wrap_pipeline(pipe, plan: FaultPlan):
    """Wrap the sessions of a loaded Pipeline (onnxruntime backend)."""
    wrap_session(pipe.vision, plan, 'vision')
    for i, layer in enumerate(pipe.decoder.layers):
        wrap_session(layer, plan, 'layer', i)
    wrap_session(pipe.decoder.post, plan, 'post')
    return pipe


def install(plan: FaultPlan, load_delay_s: float = 0.0) -> None:
    """Wrap every session OnnxRuntime opens from now on (layers numbered in opening order).

    ``load_delay_s`` > 0: every Pipeline.load sleeps that long first (says so on stderr).
    """
    from qwen_vl_ros.vlm.pipeline import Pipeline
    from qwen_vl_ros.vlm.runtime.onnx import OnnxRuntime

    if load_delay_s > 0:
        real_load = Pipeline.load.__func__

        def slow_load(cls, *args, **kwargs):
            print(f'fault_runtime: model load delayed {load_delay_s:g} s', file=sys.stderr,
                  flush=True)
            time.sleep(load_delay_s)
            return real_load(cls, *args, **kwargs)

        Pipeline.load = classmethod(slow_load)

    original = OnnxRuntime.open
    layers = iter(range(1 << 30))

    def open_wrapped(self, paths, role='', files=None, kv_len=0):
        session = original(self, paths, role, files, kv_len)
        return wrap_session(session, plan, role, next(layers) if role == 'layer' else None)

    OnnxRuntime.open = open_wrapped


def write_plan(path, *faults: Fault) -> None:
    """Arm faults in a node process started with QVR_FAULT_PLAN=path (atomic write)."""
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
        json.dump([f.__dict__ for f in faults], f)
    os.replace(tmp, path)
