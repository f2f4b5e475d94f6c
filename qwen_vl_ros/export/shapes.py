"""Tensor names and shapes of the decoder-layer shape groups (CONTRACT.md), without torch.

Group 0 decodes one token against a cache of `kv_len` rows; group 1 prefills `prefill_len` rows
(the whole prompt, or the first chunk of a chunked build) with a dummy cache; every further group
prefills one chunk of `prefill_len` rows on top of a history of H rows (chunked builds only).
"""
from dataclasses import dataclass

LAYER_INPUTS = ('K_cache', 'V_cache', 'indices', 'input', 'mask')
LAYER_OUTPUTS = ('K_cache_out', 'V_cache_out', 'output')


@dataclass(frozen=True)
class LayerGroup:
    """One shape group of a decoder-layer model."""

    index: int
    rows: int          # query rows per call: 1 (decode) or prefill_len
    index_rows: int    # 1 (decode: plain rope position) or 3 (mrope t/h/w rows)
    history: int       # cache rows attended besides the new ones; 0 = dummy cache (group 1)
    hidden: int
    kv_dim: int

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the inputs, in the graph's input order."""
        cache = (1, self.history, self.kv_dim) if self.history else (1, 1, self.hidden)
        return {
            'K_cache': cache,
            'V_cache': cache,
            'indices': (self.index_rows, self.rows),
            'input': (1, self.rows, self.hidden),
            'mask': (1, self.rows, self.history + self.rows),
        }

    @property
    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the outputs, in the graph's output order."""
        return {
            'K_cache_out': (1, self.rows, self.kv_dim),
            'V_cache_out': (1, self.rows, self.kv_dim),
            'output': (1, self.rows, self.hidden),
        }


def layer_groups(hidden: int, kv_dim: int, prefill_len: int, kv_len: int,
                 histories: tuple[int, ...] = ()) -> list[LayerGroup]:
    """List the shape groups of a build: decode, first prefill (chunk), one per chunk history."""
    if not 0 < prefill_len <= kv_len:
        raise ValueError(f'prefill length {prefill_len} must be in 1..kv-len ({kv_len})')
    if list(histories) != sorted(set(histories)) or any(h <= 0 for h in histories):
        raise ValueError(f'prefill histories {list(histories)} must be positive and increasing')
    if histories and histories[-1] + prefill_len > kv_len:
        raise ValueError(f'largest history {histories[-1]} + chunk {prefill_len} exceeds '
                         f'kv-len {kv_len}: the prompt would not fit in the cache')
    groups = [LayerGroup(0, 1, 1, kv_len, hidden, kv_dim),
              LayerGroup(1, prefill_len, 3, 0, hidden, kv_dim)]
    groups += [LayerGroup(2 + i, prefill_len, 3, h, hidden, kv_dim)
               for i, h in enumerate(histories)]
    return groups


def max_context(groups: list[LayerGroup]) -> int:
    """Largest number of sequence rows any group attends over (history + new rows)."""
    return max(g.history + g.rows for g in groups)
