"""Choosing the next token from logits: greedy, or sampled with HF's processors in HF's order.

Order as transformers' generate applies them: repetition penalty, then temperature, top-k,
top-p; greedy takes the argmax after the penalty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SamplingOptions:
    """Resolved sampling settings (no Nones)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None


class Sampler:
    """Picks tokens; owns the random generator so a seed makes a request repeatable."""

    def __init__(self, opts: SamplingOptions, prompt_ids=()):
        self.opts = opts
        self.rng = np.random.default_rng(opts.seed)
        # ids seen so far (prompt + output), as HF's repetition penalty counts them
        self._seen = set(int(i) for i in prompt_ids)
        self._seen_arr = np.fromiter(sorted(self._seen), np.int64, len(self._seen))

    def __call__(self, logits: np.ndarray, candidates: np.ndarray | None = None) -> int:
        """Next token id from float32 logits (V,); remembers it for the repetition penalty.

        ``candidates``: ascending int64 ids, the only tokens allowed (a typed answer's
        grammar); the choice equals the one over logits with every other token at -inf, without
        touching the whole vocabulary.
        """
        token = self._pick(logits, candidates)
        if token not in self._seen:
            self._seen.add(token)
            self._seen_arr = np.append(self._seen_arr, token)
        return token

    def _pick(self, logits: np.ndarray, candidates=None) -> int:
        o = self.opts
        if o.repetition_penalty != 1.0 and len(self._seen_arr):
            logits = logits.copy()
            idx = self._seen_arr
            s = logits[idx]
            logits[idx] = np.where(s < 0, s * o.repetition_penalty, s / o.repetition_penalty)
        ids = None
        if candidates is not None:
            ids, logits = candidates, logits[candidates]
        if not o.do_sample:
            best = int(np.argmax(logits))
            return int(ids[best]) if ids is not None else best
        # Only top-k candidates can be drawn: work on them alone (ascending ids, so the draw
        # equals one over the whole vocabulary with zeros elsewhere) instead of exp and sort
        # over all 151936 logits per token. Temperature scaling keeps the order, so choosing
        # the candidates before dividing by it is the same choice (ties included, as HF).
        if 0 < o.top_k < len(logits):
            kth = logits.max() if o.top_k == 1 else np.partition(logits, -o.top_k)[-o.top_k]
            keep = np.flatnonzero(logits >= kth)
            ids = keep if ids is None else ids[keep]
            logits = logits[keep]
        x = logits.astype(np.float64) / max(o.temperature, 1e-6)
        probs = np.exp(x - x.max())
        probs /= probs.sum()
        if o.top_p < 1.0:
            order = np.argsort(-probs, kind='stable')
            cum = np.cumsum(probs[order])
            # keep the smallest prefix whose mass reaches top_p (always at least one token)
            keep = order[:int(np.searchsorted(cum, o.top_p) + 1)]
            mask = np.zeros_like(probs)
            mask[keep] = probs[keep]
            probs = mask / mask.sum()
        pick = int(self.rng.choice(len(probs), p=probs))
        return int(ids[pick]) if ids is not None else pick
