"""The one small interface every runtime offers the pipeline."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """Name, exact shape and dtype of one model input or output in one shape group."""

    name: str
    shape: tuple
    dtype: np.dtype

    def zeros(self) -> np.ndarray:
        """Return a zero array that this input accepts as is."""
        return np.zeros(self.shape, self.dtype)


class Session:
    """One compiled model with one or more shape groups, driven from a single thread.

    ``groups`` lists the shape groups the model has (axmodel: 0 = decode, 1.. = prefill; a model
    with one shape has just group 0). ``inputs``/``outputs`` tell exactly what ``run`` takes and
    returns for a group: the pipeline reads shapes and dtypes here instead of assuming them.
    """

    path: str = ''
    groups: tuple = (0,)

    def inputs(self, group: int = 0) -> list[TensorSpec]:
        """Input specs of a shape group, in the model's order."""
        raise NotImplementedError

    def outputs(self, group: int = 0) -> list[TensorSpec]:
        """Output specs of a shape group, in the model's order."""
        raise NotImplementedError

    def run(self, feed: dict, group: int = 0) -> list[np.ndarray]:
        """Run one shape group on ``feed`` (name -> array of exactly the declared shape/dtype)."""
        raise NotImplementedError

    def kv_cache(self, decode_group: int):
        """Return a decoder layer's KV cache kept in the runtime's own buffers, or None.

        None (the default) means the decoder keeps the cache in host arrays and feeds it to
        ``run``; see runtime/axengine_kv.py for the object a runtime may return instead.
        """
        return None

    def input(self, name: str, group: int = 0) -> TensorSpec:
        """Spec of one named input."""
        for spec in self.inputs(group):
            if spec.name == name:
                return spec
        raise KeyError(f'{self.path}: no input {name!r} in shape group {group}')


class Runtime:
    """Opens sessions; one per process, chosen by ``select_runtime``.

    ``where`` says what runs the models once one is open (pyaxengine: the execution provider
    and, on an M.2 card, which card), for the log and /diagnostics.
    """

    name = ''
    where = ''

    def open(self, paths: dict, role: str, files, kv_len: int) -> Session:
        """Open a model given as {shape group: path} (-1 = one file holding every group).

        ``role`` ('vision', 'layer' or 'post'), the model directory's ``files`` and ``kv_len``
        matter only to a runtime that cannot read shapes from the model (older pyaxengine).
        """
        raise NotImplementedError
