"""The language model as the compiled per-layer models see it: prefill, decode, KV cache.

Everything about shapes is read from the layer models' own shape groups (CONTRACT.md):
the group whose ``indices`` has one element decodes; every other group prefills a chunk of
C = ``indices.shape[-1]`` tokens on top of H = ``mask.shape[-1] - C`` cached rows (H = 0 for the
first chunk, which is the whole prompt in a single-prefill build). The KV length L and row
width come from the decode group's ``K_cache``.

Cache slots and rope positions are different things: the prompt fills slots 0..T-1, generated
token k goes to slot T+k, but its rope position is max(prompt positions) + 1 + k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ModelDirError, NonFiniteOutput, PromptTooLongError
from .runtime import Session

BLOCKED = -65536.0  # additive mask value the compiled models were built with (exact in bf16)
LAYER_INPUTS = ('K_cache', 'V_cache', 'indices', 'input', 'mask')
LAYER_OUTPUTS = ('K_cache_out', 'V_cache_out', 'output')  # taken by name, any order


@dataclass(frozen=True)
class PrefillGroup:
    """A prefill shape group: ``chunk`` new tokens on top of ``history`` cached rows."""

    group: int
    chunk: int
    history: int


class DecoderStack:
    """The decoder layer sessions, the post model, and the KV cache they share."""

    def __init__(self, layers: list, post: Session):
        self.layers = layers
        self.post = post
        first = layers[0]
        for i, layer in enumerate(layers):
            for g in first.groups:
                if [(s.name, s.shape) for s in layer.inputs(g)] != \
                        [(s.name, s.shape) for s in first.inputs(g)]:
                    raise ModelDirError(f'layer {i} ({layer.path}) has other shapes than layer 0'
                                        f' in shape group {g}')
        decode = [g for g in first.groups if _size(first.input('indices', g).shape) == 1]
        if len(decode) != 1:
            raise ModelDirError(f'{first.path}: expected exactly one decode shape group '
                                f'(indices of one element), found {decode}')
        self.decode_group = decode[0]
        prefill = []
        for g in first.groups:
            if g == self.decode_group:
                continue
            chunk = first.input('indices', g).shape[-1]
            prefill.append(PrefillGroup(g, chunk, first.input('mask', g).shape[-1] - chunk))
        if not prefill:
            raise ModelDirError(f'{first.path}: no prefill shape group')
        self.prefill_groups = sorted(prefill, key=lambda p: p.history)
        if self.prefill_groups[0].history != 0:
            raise ModelDirError(f'{first.path}: no prefill group for the first chunk')
        if len({p.chunk for p in prefill}) != 1:
            raise ModelDirError(f'{first.path}: prefill groups disagree on the chunk size')

        spec = {s.name: s for s in first.inputs(self.decode_group)}
        missing = set(LAYER_INPUTS) - set(spec)
        if missing:
            raise ModelDirError(f'{first.path}: decoder layer lacks inputs {sorted(missing)}')
        # Outputs by name: a model may order them otherwise (a positional unpack would give a
        # broadcast error, or silent garbage when the hidden size equals the KV width).
        self._out_at = {}
        for g in first.groups:
            names = [s.name for s in first.outputs(g)]
            lacking = [n for n in LAYER_OUTPUTS if n not in names]
            if lacking:
                raise ModelDirError(f'{first.path}: decoder layer lacks outputs {lacking} in '
                                    f'shape group {g} (it has {names}; CONTRACT.md: '
                                    f'{", ".join(LAYER_OUTPUTS)})')
            self._out_at[g] = [names.index(n) for n in LAYER_OUTPUTS]
        _, self.kv_len, self.kv_dim = spec['K_cache'].shape
        self.hidden = spec['input'].shape[-1]
        self.dtype = spec['input'].dtype          # embeddings and hidden states
        self.cache_dtype = spec['K_cache'].dtype
        self.mask_dtype = spec['mask'].dtype
        self.index_dtype = spec['indices'].dtype
        self.chunk = self.prefill_groups[0].chunk
        self.max_prompt = min(self.prefill_groups[-1].history + self.chunk, self.kv_len)
        # The KV cache: inside each layer session's own input buffers when its runtime offers
        # that (pyaxengine: one row written per step instead of the whole cache fed per step),
        # else host arrays fed to run().
        kv = [layer.kv_cache(self.decode_group) for layer in layers]
        self.kv = kv if all(k is not None for k in kv) else None
        shape, n = (1, self.kv_len, self.kv_dim), 0 if self.kv else len(layers)
        self.k_cache = [np.zeros(shape, self.cache_dtype) for _ in range(n)]
        self.v_cache = [np.zeros(shape, self.cache_dtype) for _ in range(n)]
        # The first chunk's K/V inputs are dummies of whatever shape the model declares.
        g1 = self.prefill_groups[0].group
        self._dummy_k = first.input('K_cache', g1).zeros()
        self._dummy_v = first.input('V_cache', g1).zeros()
        self._decode_mask = np.zeros((1, 1, self.kv_len + 1), self.mask_dtype)
        self.cache_epoch = 0   # bumped by clear_cache
        self._decode_index = np.zeros((1, 1), self.index_dtype)

    # -- prefill ----------------------------------------------------------------------------
    def check_prompt(self, n: int) -> None:
        """Refuse a prompt the compiled prefill cannot take, naming both numbers."""
        if n > self.max_prompt:
            raise PromptTooLongError(
                f'the prompt is {n} tokens but the model can prefill at most {self.max_prompt} '
                f'(prefill length {self.chunk}'
                + (f', chunks up to {self.max_prompt}' if len(self.prefill_groups) > 1 else '')
                + '): shorten the prompt, use a smaller image or fewer video frames')

    def _group_for(self, history: int) -> PrefillGroup:
        return next(p for p in self.prefill_groups if p.history >= history)

    def _chunk_mask(self, pg: PrefillGroup, h: int, real: int) -> np.ndarray:
        """Mask of a chunk with ``h`` cached rows and ``real`` non-padding tokens."""
        c = pg.chunk
        mask = np.full((1, c, pg.history + c), BLOCKED, np.float32)
        mask[0, :real, :h] = 0.0
        causal = np.triu(np.full((real, real), BLOCKED, np.float32), 1)
        mask[0, :real, pg.history:pg.history + real] = causal
        return mask.astype(self.mask_dtype)

    @property
    def can_resume(self) -> bool:
        """True when a prefill may start at a row > 0 on top of rows kept from an earlier one.

        Needs a prefill group that takes a history (chunked builds) and a cache that keeps its
        rows between requests: host arrays do; an in-buffer cache says so with ``keeps_rows``.
        """
        return len(self.prefill_groups) > 1 and (
            self.kv is None or all(getattr(k, 'keeps_rows', False) for k in self.kv))

    def chunk_starts(self, total: int, start: int = 0) -> list:
        """First rows of the chunks that prefill rows [start, total) (reuse.py keeps the rest).

        Chunks run from ``start`` in steps of the chunk size. When the last one would need a
        longer history than any group takes, they start at the chunk boundary below ``start``
        instead, the schedule of a fresh run, which always fits (check_prompt).
        """
        c = self.chunk
        if start and (not self.can_resume or
                      start + (total - start - 1) // c * c > self.prefill_groups[-1].history):
            start = start // c * c if self.can_resume else 0
        return list(range(start, total, c))

    def prefill(self, embeds: np.ndarray, positions: np.ndarray, start: int = 0,
                should_stop=None) -> np.ndarray | None:
        """Run the prompt through every layer, chunk by chunk; return the last row's hidden.

        ``start`` > 0: rows [0, start) are already in the cache (a reused prompt prefix) and
        only the rest is run (see ``chunk_starts``). ``should_stop()`` is asked before each
        chunk: True ends the prefill there and returns None (a cancel during a long chunked
        prefill takes effect after at most one chunk; the rows written so far are not a
        prompt anyone may reuse).
        """
        total = len(embeds)
        self.check_prompt(total)
        c = self.chunk
        last = None
        for h in self.chunk_starts(total, start):
            if should_stop is not None and should_stop():
                return None
            real = min(c, total - h)
            pg = self._group_for(h)
            x = np.zeros((1, c, self.hidden), self.dtype)
            x[0, :real] = embeds[h:h + real]
            idx = np.zeros((3, c), self.index_dtype)
            idx[:, :real] = positions[:, h:h + real]
            mask = self._chunk_mask(pg, h, real)
            for i in range(len(self.layers)):
                feed = {'indices': idx, 'input': x, 'mask': mask}
                if pg.history == 0:
                    feed['K_cache'], feed['V_cache'] = self._dummy_k, self._dummy_v
                elif self.kv is None:  # a prefix of the host cache: a view, no copy
                    feed['K_cache'] = self.k_cache[i][:, :pg.history]
                    feed['V_cache'] = self.v_cache[i][:, :pg.history]
                x = self._layer(i, feed, pg.group, h, real)
            last = x[:, real - 1:real]
        return last

    # -- decode -----------------------------------------------------------------------------
    def start_decode(self, prompt_len: int) -> None:
        """Open the cache rows the prompt filled; slot L (the current token) is always open."""
        m = self._decode_mask
        m[...] = BLOCKED
        m[0, 0, :prompt_len] = 0
        m[0, 0, self.kv_len] = 0

    def decode_step(self, embed: np.ndarray, slot: int, position: int) -> np.ndarray:
        """One token through every layer; its K/V go to cache row ``slot``."""
        self._decode_index[0, 0] = position
        x = embed.reshape(1, 1, self.hidden)
        feed = {'indices': self._decode_index, 'mask': self._decode_mask}
        g = self.decode_group
        for i in range(len(self.layers)):
            if self.kv is None:
                feed['K_cache'] = self.k_cache[i]
                feed['V_cache'] = self.v_cache[i]
            feed['input'] = x
            x = self._layer(i, feed, g, slot, 1)
        self._decode_mask[0, 0, slot] = 0
        return x

    def _layer(self, i: int, feed: dict, group: int, row: int, count: int) -> np.ndarray:
        """Run layer i; its new K/V rows [0, count) become cache rows [row, row + count).

        The one place where the two caches differ: an in-buffer cache supplies K_cache /
        V_cache itself (when the feed has none) and keeps the rows inside the session; only
        the last layer's hidden output must reach the host (on the M.2 card the others stay
        in card memory and go to the next layer there: runtime/axclrt_kv.py).
        """
        if self.kv is not None:
            return self.kv[i].step(feed, group, row, count, fetch=i == len(self.layers) - 1)
        outs = self.layers[i].run(feed, group)
        k_out, v_out, x = (outs[at] for at in self._out_at[group])
        self.k_cache[i][0, row:row + count] = k_out[0, :count]
        self.v_cache[i][0, row:row + count] = v_out[0, :count]
        return x

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        """Run final norm + lm_head on one hidden row -> float32 logits (V,).

        Raises NonFiniteOutput ("NaN logits: ...") when a value is NaN or Inf.
        """
        spec = self.post.inputs(0)[0]
        feed = hidden.reshape(spec.shape).astype(spec.dtype, copy=False)
        out = self.post.run({spec.name: feed})
        logits = out[0].reshape(-1).astype(np.float32)
        if not np.isfinite(np.dot(logits, logits)):   # NaN / Inf propagate into the dot
            self._check_finite(logits)
        return logits

    def _check_finite(self, logits: np.ndarray) -> None:
        """Raise NonFiniteOutput naming the NaN / Inf counts (the cheap dot check said maybe).

        A NaN anywhere upstream (vision, a layer, the post model) reaches the logits, so the dot
        product of the logits with themselves is the one check per token (one BLAS pass over V
        values, no temporary; an overflow of finite values lands here and passes). The cache is
        cleared before raising: the rows this request wrote may hold NaN, and the additive mask
        cannot block a NaN row (NaN + mask is NaN), so the next request would fail too.
        """
        nan, inf = int(np.isnan(logits).sum()), int(np.isinf(logits).sum())
        if not nan and not inf:
            return
        self.clear_cache()
        what = ' and '.join(f'{n} {k}' for n, k in ((nan, 'NaN'), (inf, 'Inf')) if n)
        kind = 'NaN' if nan else 'Inf'
        raise NonFiniteOutput(f'{kind} logits: the model returned {what} of {logits.size} '
                              'logit values (the runtime produced garbage); the KV cache '
                              'was cleared')

    def clear_cache(self) -> None:
        """Zero every KV cache row (host arrays, or the rows in the runtime's own buffers)."""
        self.cache_epoch += 1   # rows kept for a follow-up (reuse.py) are gone
        for cache in self.k_cache + self.v_cache:
            cache.fill(0)
        for kv in self.kv or ():
            kv.clear()


def _size(shape) -> int:
    return int(np.prod(shape))
