"""Incremental detokenizing for streaming: pieces of text that never split a UTF-8 character.

Byte-level BPE tokens can end in the middle of a multi-byte character; decoding such a prefix
gives U+FFFD. Text is released only once the decoded tail no longer ends in U+FFFD, decoding a
short window of recent tokens (not the whole output) so each step stays cheap.
"""

from __future__ import annotations


class TextStream:
    """Feed generated token ids one at a time; get back the newly completed text."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list = []
        self.prefix = 0   # start of the decoding window
        self.read = 0     # tokens up to here have been released as text

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes ('' while a character is unfinished)."""
        self.ids.append(int(token_id))
        done = self._decode(self.ids[self.prefix:self.read])
        full = self._decode(self.ids[self.prefix:])
        if len(full) > len(done) and not full.endswith('\ufffd'):
            self.prefix, self.read = self.read, len(self.ids)
            return full[len(done):]
        return ''
