"""transformers' own Qwen2.5-VL as the independent reference the pipeline must equal.

Inputs are built with transformers' processor classes (tokenizer, chat template, image
processor), not with the pipeline's code, so agreement means something.
"""

import functools
import warnings

import numpy as np
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

from hf_processor import ImageOnlyProcessor, image_processor_class
from hf_processor import rope_index as _rope_index

try:
    import torch
except ImportError:   # the processors work without it (test_real_tokenizer in .venv-jazzy)
    torch = None


@functools.lru_cache(maxsize=4)
def load(hf_dir: str):
    """(model, processor) for a checkpoint directory, float32, eager attention."""
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        hf_dir, attn_implementation='eager', torch_dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(hf_dir)
    ip = image_processor_class().from_pretrained(hf_dir)
    ip.do_resize = False  # frames are given at the vision model's size
    return model, ImageOnlyProcessor(ip, tok, chat_template=tok.chat_template)


def inputs(hf_dir: str, frames, prompt: str, second_per_grid_t: float = 1.0) -> dict:
    """Model inputs for 0 frames (text), 1 (image) or several (video), HF's way."""
    model, proc = load(hf_dir)
    kind = 'image' if len(frames) == 1 else 'video'
    content = ([{'type': kind}] if frames else []) + [{'type': 'text', 'text': prompt}]
    text = proc.apply_chat_template([{'role': 'user', 'content': content}], tokenize=False,
                                    add_generation_prompt=True)
    if len(frames) <= 1:
        out = proc(text=[text], images=frames or None, return_tensors='pt')
        out.pop('token_type_ids', None)
        return dict(out)
    # Video: the image processor still builds pixel_values_videos; the pad expansion below is
    # what Qwen2_5_VLProcessor does with its video processor's grid.
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        vid = proc.image_processor(images=None, videos=[list(frames)], return_tensors='pt')
    t, h, w = vid['video_grid_thw'][0].tolist()
    merge = proc.image_processor.merge_size
    text = text.replace('<|video_pad|>', '<|video_pad|>' * (t * h * w // merge // merge))
    ids = proc.tokenizer([text], return_tensors='pt', add_special_tokens=False)
    return {'input_ids': ids['input_ids'], 'attention_mask': ids['attention_mask'],
            'pixel_values_videos': vid['pixel_values_videos'],
            'video_grid_thw': vid['video_grid_thw'],
            'second_per_grid_ts': torch.tensor([second_per_grid_t])}


def generate(hf_dir: str, frames, prompt: str, n: int, second_per_grid_t: float = 1.0):
    """Greedy ids and per-step float32 logits (n, V) of transformers' generate."""
    model, _ = load(hf_dir)
    feed = inputs(hf_dir, frames, prompt, second_per_grid_t)
    with torch.no_grad():
        out = model.generate(**feed, do_sample=False, max_new_tokens=n, min_new_tokens=n,
                             eos_token_id=None, repetition_penalty=1.0, temperature=None,
                             top_k=None, top_p=None, output_logits=True,
                             return_dict_in_generate=True)
    new = out.sequences[0, feed['input_ids'].shape[1]:].tolist()
    logits = torch.stack(out.logits)[:, 0].float().numpy()
    return new, logits, feed


def rope_index(hf_dir: str, feed: dict) -> np.ndarray:
    """Return transformers' 3-D rope positions (3, T) for ``feed``."""
    model, _ = load(hf_dir)
    pos, _ = _rope_index(model, feed['input_ids'], feed.get('image_grid_thw'),
                         feed.get('video_grid_thw'), feed.get('second_per_grid_ts'),
                         feed['attention_mask'])
    return pos[:, 0].numpy()


def min_top2_gap(logits: np.ndarray) -> float:
    """Smallest gap between the best and second-best logit over the steps."""
    top = np.sort(logits, axis=-1)[:, -2:]
    return float((top[:, 1] - top[:, 0]).min())
