"""A checkpoint whose tokenizer files transformers 5.x wrote exports and runs (issue 9, item 10).

The tiny checkpoint's tokenizer files are rewritten the way transformers 5.x saves them
(tokenizer_class TokenizersBackend, extra_special_tokens as a list, no added_tokens_decoder,
no special_tokens_map.json, the template in chat_template.jinja); qwen-vl-export under the
pinned 4.x must export it, and the pipeline must give the tokens of the untouched export.
"""
import json
import shutil

import numpy as np

from qwen_vl_ros.vlm import GenerationOptions, Pipeline


def as_saved_by_transformers_5(hf_dir, dst):
    shutil.copytree(hf_dir, dst)
    cfg_path = dst / 'tokenizer_config.json'
    cfg = json.loads(cfg_path.read_text())
    specials = cfg.pop('additional_special_tokens', [])
    cfg.pop('added_tokens_decoder', None)
    cfg.update(tokenizer_class='TokenizersBackend', backend='tokenizers',
               extra_special_tokens=specials)
    cfg_path.write_text(json.dumps(cfg))
    (dst / 'special_tokens_map.json').unlink(missing_ok=True)
    (dst / 'chat_template.json').unlink(missing_ok=True)
    assert (dst / 'chat_template.jinja').is_file()
    return dst


def test_export_and_run_a_5x_tokenizer_checkpoint(tiny_hf_dir, tiny_onnx_dir, tmp_path):
    from qwen_vl_ros.export.exporter import export_checkpoint
    hf5 = as_saved_by_transformers_5(tiny_hf_dir, tmp_path / 'hf5')
    out = export_checkpoint(hf5, tmp_path / 'onnx5', log=lambda *_: None)
    frame = np.random.default_rng(2).integers(0, 256, (448, 448, 3), dtype=np.uint8)
    opts = GenerationOptions(max_new_tokens=8, greedy=True)
    got = Pipeline.load(str(out), backend='onnxruntime', threads=1, progress=lambda m: None)
    want = Pipeline.load(str(tiny_onnx_dir), backend='onnxruntime', threads=1,
                         progress=lambda m: None)
    a, b = got.describe([frame], 'Describe this image.', opts), \
        want.describe([frame], 'Describe this image.', opts)
    assert a.prompt_tokens == b.prompt_tokens and a.token_ids == b.token_ids
    assert a.text == b.text
