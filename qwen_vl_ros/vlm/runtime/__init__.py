"""Runtimes behind one small interface: onnxruntime and axengine (pyaxengine, both APIs)."""

from __future__ import annotations

import logging

from ..errors import ModelDirError
from .base import Runtime, Session, TensorSpec

__all__ = ['Runtime', 'Session', 'TensorSpec', 'select_runtime', 'BACKENDS']

BACKENDS = ('auto', 'axengine', 'onnxruntime')
log = logging.getLogger('qwen_vl_ros')


def _auto_backend(model_kind: str) -> str:
    """Pick axengine when it imports (and the models are axmodels), onnxruntime otherwise."""
    if model_kind == 'onnx':
        log.info('backend auto: the model directory holds ONNX models, using onnxruntime')
        return 'onnxruntime'
    from .axengine import import_axengine
    try:
        import_axengine()
    except ImportError as e:
        log.warning('backend auto: axengine does not import (%s), trying onnxruntime', e)
        return 'onnxruntime'
    log.info('backend auto: axengine imports, using it')
    return 'axengine'


def select_runtime(backend: str, model_kind: str, providers=None, provider_options=None,
                   threads: int = 0, npu_provider: str = 'auto', npu_device: int = 0) -> Runtime:
    """Return the runtime for ``backend``; ``auto`` takes axengine when it imports.

    ``model_kind`` is what the model directory holds ('axmodel' or 'onnx'), so that a wrong
    pairing fails here with a clear reason instead of deep inside a runtime. ``npu_provider``
    and ``npu_device`` choose pyaxengine's provider and card (axengine.npu_choice) unless
    ``providers`` / ``provider_options`` are given; onnxruntime ignores them.
    """
    if backend not in BACKENDS:
        raise ModelDirError(f'backend {backend!r} is not one of {", ".join(BACKENDS)}')
    from .npu_choice import npu_choice
    npu = npu_choice(npu_provider, npu_device)  # a bad value fails on every backend
    if backend == 'auto':
        backend = _auto_backend(model_kind)
    want = 'axmodel' if backend == 'axengine' else 'onnx'
    if model_kind != want:
        raise ModelDirError(
            f'backend {backend} runs .{want} files but the model directory holds .{model_kind} '
            f'files: use backend {"onnxruntime" if model_kind == "onnx" else "axengine"}')
    if backend == 'axengine':
        from .axengine import AxEngineRuntime
        if providers is None and provider_options is None:
            providers, provider_options = npu
        try:
            return AxEngineRuntime(providers, provider_options)
        except ImportError as e:
            raise ModelDirError(f'backend axengine: cannot import axengine ({e}); install '
                                'pyaxengine and the NPU libraries from AXERA') from e
    from .onnx import OnnxRuntime
    return OnnxRuntime(providers, threads)
