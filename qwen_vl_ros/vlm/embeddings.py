"""The token embedding table, memory-mapped: only the rows a prompt uses are ever read.

The real table is 151936 x 2048 (1.16 GiB as float32, 0.6 GiB as bf16); loading it whole would
cost that much resident memory on a board that also holds the NPU models.
"""

from __future__ import annotations

import os

import ml_dtypes
import numpy as np

from .errors import ModelDirError


class EmbeddingTable:
    """Rows of ``model.embed_tokens.weight`` from a float32 .npy or a raw bf16 .bin file."""

    def __init__(self, path: str, vocab_size: int, hidden_size: int):
        self.path = path
        want = (vocab_size, hidden_size)
        try:
            if path.endswith('.npy'):
                table = np.load(path, mmap_mode='r')
            else:
                size = os.path.getsize(path)
                need = vocab_size * hidden_size * 2
                if size != need:
                    raise ModelDirError(
                        f'{path} has {size} bytes, but vocab {vocab_size} x hidden {hidden_size}'
                        f' bf16 needs {need}')
                table = np.memmap(path, dtype=ml_dtypes.bfloat16, mode='r', shape=want)
        except (OSError, ValueError) as e:
            raise ModelDirError(f'cannot map the embedding table {path}: {e}') from e
        if table.shape != want:
            raise ModelDirError(f'{path} has shape {table.shape}, config.json says {want}')
        self.table = table

    def lookup(self, ids, dtype) -> np.ndarray:
        """Gather rows for ``ids`` into a new (len(ids), hidden) array of ``dtype``."""
        return self.table[np.asarray(ids, np.int64)].astype(dtype, copy=False)
