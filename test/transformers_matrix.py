"""Write a tiny checkpoint with the installed transformers, or read one back for export.

Run by test_export_transformers_matrix.py under each transformers the project supports (4.49,
4.57, 5.x), so that a checkpoint one major wrote is read by the others:

    python transformers_matrix.py write DIR    # save_pretrained as this transformers does, then
                                               # DIR/native.npz: logits of from_pretrained(DIR)
    python transformers_matrix.py read OUT DIR...    # OUT/<i>.npz: logits of the exporter's
                                                     # load_checkpoint(DIR i)

The checkpoint ties its embeddings and has a rope theta (500000) that is not any default, so a
reader that drops either gives other logits. The input has an image, so the 3-D rope positions
differ per axis and mrope_section matters. Prints one JSON line.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
import transformers

ROPE_THETA = 500000.0
GRID = (1, 4, 4)          # t, h, w patches: 16 patches, 4 merged image tokens


def _inputs(config) -> dict:
    """Return fixed input_ids with one image, its pixel_values (16, 1176), image_grid_thw."""
    image = config.image_token_id
    start, end = config.vision_start_token_id, config.vision_end_token_id
    text = [5, 17, 29, 41, 3]
    ids = text + [start] + [image] * (GRID[1] * GRID[2] // 4) + [end] + text[::-1]
    vision = config.vision_config
    width = 3 * vision.temporal_patch_size * vision.patch_size ** 2
    pixels = np.random.default_rng(3).standard_normal((GRID[0] * GRID[1] * GRID[2], width))
    feed = {'input_ids': torch.tensor([ids]),
            'pixel_values': torch.tensor(pixels, dtype=torch.float32),
            'image_grid_thw': torch.tensor([GRID])}
    if int(transformers.__version__.split('.')[0]) >= 5:
        # 5.x computes the 3-D rope positions only when given which tokens are an image's
        # (its processor returns them; without, image tokens get plain 1-D positions and the
        # logits differ from 4.x's from the first image token on)
        feed['mm_token_type_ids'] = (feed['input_ids'] == image).int()
    return feed


def _logits(model) -> np.ndarray:
    with torch.no_grad():
        return model(**_inputs(model.config)).logits[0].float().numpy()


def write(out: Path) -> dict:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from qwen_vl_ros.export.tiny import redraw_weights, tiny_config
    from qwen_vl_ros.export.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in tokenizer.all_special_tokens}
    config = tiny_config(ids, vocab_size=len(tokenizer))
    config.update(rope_theta=ROPE_THETA, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig.from_dict(config)).float()
    redraw_weights(model, seed=0)
    model.save_pretrained(out)
    # the reference: this transformers reading what it wrote
    native = Qwen2_5_VLForConditionalGeneration.from_pretrained(out, attn_implementation='eager')
    np.savez(out / 'native.npz', logits=_logits(native.float().eval()))
    return {'transformers': transformers.__version__, 'dir': str(out)}


def read(out: Path, hf_dirs: list) -> dict:
    """Load each checkpoint as the exporter does; OUT/<i>.npz its logits, or its error."""
    from qwen_vl_ros.export.checkpoint import load_checkpoint

    report = {'transformers': transformers.__version__, 'read': []}
    for i, hf_dir in enumerate(hf_dirs):
        try:
            model = load_checkpoint(hf_dir).float().eval()
        except Exception as e:  # noqa: BLE001 - the test shows which reader failed and why
            report['read'].append({'dir': hf_dir, 'error': f'{type(e).__name__}: {e}'})
            continue
        tied = bool(torch.equal(model.lm_head.weight, model.get_input_embeddings().weight))
        np.savez(out / f'{i}.npz', logits=_logits(model))
        report['read'].append({'dir': hf_dir, 'lm_head_is_embedding': tied,
                               'logits': str(out / f'{i}.npz')})
    return report


if __name__ == '__main__':
    cmd, target, *dirs = sys.argv[1:]
    report = write(Path(target)) if cmd == 'write' else read(Path(target), dirs)
    print(json.dumps(report), flush=True)
