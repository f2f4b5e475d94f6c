"""Work reused across requests about the same frame: vision features and the prompt's KV rows.

On the AX650N a description of one 448x448 image costs ~0.8 s of vision and ~2.9 s of prefill
before the first token; a follow-up question about the same frame needs neither again:

- **vision features**: the vision model's output is a function of the patch tensor alone, so the
  features of the newest ``size`` frame sets (an image, or the frames of one video) are kept,
  keyed by what made them: the caller's frame keys (the node: topic, stamp and frame_id of each
  frame) or, without keys, a digest of the patch bytes; plus the resize mode and the vision
  model's input size, so changing either misses the cache;
- **KV rows of the common prompt prefix** (chunked-prefill builds only): the decoder's cache still
  holds the previous prompt's K/V rows after its generation (generated tokens go to the rows
  after the prompt). A new prompt whose first p tokens are the same tokens, at the same rope
  positions, with the same vision content (system prompt, image, any matching text) gets rows
  [0, p) as they are and prefills only [p, T), starting at row p (ax-llm keeps such prefix
  caches in slots). A single-prefill build has no shape group that takes a history, so there
  only the vision features are reused.

Each row of a causal decoder depends only on the tokens up to it, so reused rows are the rows a
fresh run would compute: results are token-identical (test/test_reuse.py proves it and counts
the runtime calls skipped). What the cache holds is forgotten before every prefill and recorded
only after one succeeds; a run that fails later (e.g. NaN logits, after which the decoder
clears its cache, DecoderStack.cache_epoch) no longer matches what was recorded, and a
failed prefill drops the frame's features: a failed run leaves nothing a follow-up could reuse.
"""

from __future__ import annotations

import collections
import hashlib
from dataclasses import dataclass

import numpy as np


def patch_digest(patches: np.ndarray) -> str:
    """Key of a patch tensor by its bytes (blake2b, 128 bit): equal bytes = equal features."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str((patches.shape, patches.dtype.str)).encode())
    h.update(np.ascontiguousarray(patches).data)
    return h.hexdigest()


class VisionCache:
    """Vision features of the newest ``size`` frame sets, least recently used dropped first.

    ``size`` 0 keeps nothing. Keys are any hashable value; features are stored as given (the
    decoder's dtype, (tokens, hidden)) and must not be written to by the caller.
    """

    def __init__(self, size: int):
        if size < 0:
            raise ValueError(f'vision cache size must be >= 0, got {size}')
        self.size = int(size)
        self._entries: collections.OrderedDict = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key):
        """Return the features kept under ``key`` (now the newest entry), or None."""
        feats = self._entries.get(key)
        if feats is not None:
            self._entries.move_to_end(key)
        return feats

    def put(self, key, feats: np.ndarray) -> None:
        """Keep ``feats`` under ``key``; drop the oldest entries beyond ``size``."""
        if not self.size:
            return
        self._entries[key] = feats
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def drop(self, key) -> None:
        """Forget the features kept under ``key`` (if any)."""
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()


@dataclass(frozen=True)
class CachedPrompt:
    """What the decoder's KV rows [0, len(ids)) hold: the tokens, their positions, the vision."""

    ids: np.ndarray          # int64 (T,)
    positions: np.ndarray    # int64 (3, T)
    vision_key: object       # key of the vision features spliced over the pad tokens, or None
    epoch: int = 0           # the decoder's cache_epoch when the rows were written


def common_prefix(cached: CachedPrompt | None, ids: np.ndarray, positions: np.ndarray,
                  vision_key, pad_ids) -> int:
    """Count the leading tokens of a prompt whose K/V rows ``cached`` already holds.

    Tokens match when id and all three rope positions are equal; vision pad tokens match only
    when the vision content is the same too (pads of another frame have equal ids but other
    embeddings).
    """
    if cached is None:
        return 0
    n = min(len(ids), len(cached.ids))
    same = (cached.ids[:n] == ids[:n]) & np.all(cached.positions[:, :n] == positions[:, :n],
                                                axis=0)
    if vision_key is None or cached.vision_key != vision_key:
        same &= ~np.isin(ids[:n], list(pad_ids))
    differ = np.flatnonzero(~same)
    return int(differ[0]) if len(differ) else n


class PrefixCache:
    """Which prompt the decoder's KV cache holds, and how much of a new prompt it can skip.

    ``enabled`` is False where the rows cannot be resumed: a single-prefill build, or a runtime
    that does not keep its cache between requests (decoder.DecoderStack.can_resume).
    """

    def __init__(self, enabled: bool, pad_ids):
        self.enabled = bool(enabled)
        self.pad_ids = tuple(pad_ids)
        self.cached: CachedPrompt | None = None

    def reusable(self, ids: np.ndarray, positions: np.ndarray, vision_key,
                 epoch: int = 0) -> int:
        """Rows [0, p) of the cache that the prompt may keep; at least its last token is run.

        The last token must go through the layers again: its hidden row gives the first logits.
        ``epoch``: the decoder's cache_epoch now; another one than at ``hold`` = the rows were
        wiped since (DecoderStack.clear_cache), nothing is kept.
        """
        if not self.enabled or (self.cached is not None and self.cached.epoch != epoch):
            return 0
        p = common_prefix(self.cached, ids, positions, vision_key, self.pad_ids)
        return max(0, min(p, len(ids) - 1))

    def forget(self) -> None:
        """Call before the cache rows are written: until ``hold`` they are not trustworthy."""
        self.cached = None

    def hold(self, ids: np.ndarray, positions: np.ndarray, vision_key, epoch: int = 0) -> None:
        """Record that rows [0, len(ids)) now hold this prompt (after a successful prefill)."""
        if self.enabled:
            self.cached = CachedPrompt(np.array(ids, np.int64), np.array(positions, np.int64),
                                       vision_key, epoch)
