"""Incremental detokenizing for streaming: pieces of text that never split a UTF-8 character.

Byte-level BPE tokens can end in the middle of a multi-byte character; decoding such a prefix
gives U+FFFD. Text is released only once the decoded tail no longer ends in U+FFFD, decoding a
short window of recent tokens (not the whole output) so each step stays cheap. ``flush`` at the
end releases what is still held back (the same idea as transformers' TextStreamer.end), so the
pieces always join to exactly the final text.
"""

from __future__ import annotations


class TextStream:
    """Feed generated token ids one at a time; get back the newly completed text."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list = []
        self.prefix = 0   # start of the decoding window
        self.read = 0     # tokens up to here have been released as text
        self.sent = ''    # every piece released so far, joined

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes ('' while a character is unfinished)."""
        self.ids.append(int(token_id))
        done = self._decode(self.ids[self.prefix:self.read])
        full = self._decode(self.ids[self.prefix:])
        if len(full) > len(done) and not full.endswith('\ufffd'):
            self.prefix, self.read = self.read, len(self.ids)
            piece = full[len(done):]
            self.sent += piece
            return piece
        return ''

    def flush(self) -> str:
        """Return the text still held back, so that all pieces join to ``decode(ids)``.

        Called once generation has ended: a last token that ends mid-character stays U+FFFD
        here exactly as in the final text. If the window decoding ever disagreed with decoding
        the whole output, the final text wins from the first differing character (the pieces
        already sent cannot be taken back; the difference is not silent: the result's text is
        the whole decode).
        """
        final = self._decode(self.ids)
        self.prefix = self.read = len(self.ids)
        if final.startswith(self.sent):
            tail = final[len(self.sent):]
        else:  # pragma: no cover - window decoding equals whole decoding for byte-level BPE
            common = 0
            for a, b in zip(final, self.sent):
                if a != b:
                    break
                common += 1
            tail = final[common:]
        self.sent += tail
        return tail
