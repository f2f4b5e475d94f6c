"""Streaming always ends equal to the final text (issue 9, item 6).

A last token that ends in the middle of a UTF-8 character was held back for good; now the tail
is flushed when generation ends. Checked for every max_new_tokens from 1 to 40, text-only and
with an image, on the tiny model (random weights: byte tokens that split characters are common),
and with the tokenizer alone on every prefix of a text full of multi-byte characters.
"""
import numpy as np
import pytest

from qwen_vl_ros.vlm import GenerationOptions, Pipeline
from qwen_vl_ros.vlm.streaming import TextStream

TEXT = 'Robot sees 猫 and 🤖 near the door: ça va. Ünïcödé — ✓ 日本語テキスト 👍🏽'


@pytest.fixture(scope='module')
def pipe(tiny_onnx_dir):
    return Pipeline.load(str(tiny_onnx_dir), backend='onnxruntime', threads=1,
                         progress=lambda m: None)


def stream_all(tokenizer, ids):
    stream = TextStream(tokenizer)
    pieces = [stream.push(t) for t in ids]
    return pieces, stream.flush()


def test_every_prefix_of_a_multibyte_text(pipe):
    tok = pipe.tokenizer
    ids = tok(TEXT, add_special_tokens=False)['input_ids']
    cut_mid_character = 0
    for n in range(1, len(ids) + 1):
        final = tok.decode(ids[:n], skip_special_tokens=True)
        pieces, tail = stream_all(tok, ids[:n])
        assert ''.join(pieces) + tail == final, n
        assert all('\ufffd' not in p for p in pieces)   # U+FFFD only in the flushed tail ...
        assert tail.count('\ufffd') == final.count('\ufffd')   # ... where the final text has it
        cut_mid_character += final.endswith('\ufffd')
    assert cut_mid_character > 3   # the kind was exercised


@pytest.mark.parametrize('with_image', [False, True])
def test_stream_equals_the_final_text_for_every_length(pipe, with_image):
    frames = ([np.random.default_rng(5).integers(0, 256, (448, 448, 3), dtype=np.uint8)]
              if with_image else [])
    mid_character = 0
    for n in range(1, 41):
        pieces = []
        r = pipe.describe(frames, 'Describe this image.',
                          GenerationOptions(max_new_tokens=n, greedy=True), on_text=pieces.append)
        assert ''.join(pieces) == r.text, n
        mid_character += r.text.endswith('\ufffd')
    assert mid_character > 0   # some lengths end mid-character (what used to lose the tail)
