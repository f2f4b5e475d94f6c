"""With the real Qwen2.5-VL-3B tokenizer and config: prompt ids equal transformers' processor's."""

from pathlib import Path

import numpy as np
import pytest

from qwen_vl_ros.vlm.model_dir import parse_text_config
from qwen_vl_ros.vlm.prompt import PromptBuilder, VisionBlock, load_tokenizer

REAL = Path(__file__).resolve().parents[2] / 'shared' / 'qwen2_5_vl_3b'
pytestmark = pytest.mark.skipif(
    not (REAL / 'vocab.json').exists(),
    reason=f'the real Qwen2.5-VL-3B tokenizer is not at {REAL} (only in the team workspace)')


def test_prompt_ids_equal_hf_processor_for_448_image():
    import json

    hf = pytest.importorskip('hf_reference', reason='needs transformers (the reference)')
    from transformers import AutoTokenizer

    cfg = parse_text_config(json.loads((REAL / 'config.json').read_text()))
    tok = load_tokenizer(str(REAL))
    assert tok.convert_tokens_to_ids('<|image_pad|>') == cfg.image_token_id == 151655
    ids, positions = PromptBuilder(tok, cfg).build(
        'Describe this image.', '', (VisionBlock('image', 1, 32, 32),))

    ref_tok = AutoTokenizer.from_pretrained(str(REAL))
    template = json.loads((REAL / 'chat_template.json').read_text())['chat_template']
    proc = hf.ImageOnlyProcessor(hf.image_processor_class().from_pretrained(str(REAL)), ref_tok,
                                 chat_template=template)
    text = proc.apply_chat_template(
        [{'role': 'user', 'content': [{'type': 'image'},
                                      {'type': 'text', 'text': 'Describe this image.'}]}],
        tokenize=False, add_generation_prompt=True)
    frame = np.zeros((448, 448, 3), np.uint8)
    out = proc(text=[text], images=[frame], return_tensors='np')
    np.testing.assert_array_equal(ids, out['input_ids'][0])
    assert (ids == cfg.image_token_id).sum() == 256
    assert len(ids) == out['input_ids'].shape[1]
    # text after the image continues at max(image positions) + 1 = start + 16
    start = int(np.flatnonzero(ids == cfg.image_token_id)[0])
    assert positions[:, start + 256].tolist() == [start + 16] * 3

