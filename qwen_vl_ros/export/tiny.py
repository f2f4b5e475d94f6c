"""A tiny random-weight Qwen2.5-VL checkpoint, built offline: the numerical reference of the tests.

`build_tiny_checkpoint(out_dir)` writes a Hugging Face model directory (config.json in the flat
layout of the real Qwen2.5-VL-3B-Instruct, model.safetensors, tokenizer, generation and
preprocessor configs) of a model with the real architecture and tiny sizes. Every weight is redrawn
large (HF's init zeroes biases and sets norm gains to 1, which would hide bugs there, and its small
init gives near-tied logits).

    python -m qwen_vl_ros.export.tiny --out DIR [--seed N]
"""
import argparse
import json
from pathlib import Path

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from .tokenizer import build_tokenizer

WEIGHT_STD = 0.2
NORM_GAIN_STD = 0.1

# Qwen2.5-VL-3B-Instruct's preprocessor_config.json; the image layout is fixed by the model.
PREPROCESSOR_CONFIG = {
    'min_pixels': 3136,
    'max_pixels': 12845056,
    'patch_size': 14,
    'temporal_patch_size': 2,
    'merge_size': 2,
    'image_mean': [0.48145466, 0.4578275, 0.40821073],
    'image_std': [0.26862954, 0.26130258, 0.27577711],
    'image_processor_type': 'Qwen2VLImageProcessor',
    'processor_class': 'Qwen2_5_VLProcessor',
}


def tiny_config(ids: dict[str, int], vocab_size: int) -> dict:
    """config.json of the tiny model, key for key the layout of the real 3B config."""
    return {
        'architectures': ['Qwen2_5_VLForConditionalGeneration'],
        'attention_dropout': 0.0,
        'bos_token_id': ids['<|endoftext|>'],
        'eos_token_id': ids['<|im_end|>'],
        'vision_start_token_id': ids['<|vision_start|>'],
        'vision_end_token_id': ids['<|vision_end|>'],
        'vision_token_id': ids['<|vision_pad|>'],
        'image_token_id': ids['<|image_pad|>'],
        'video_token_id': ids['<|video_pad|>'],
        'hidden_act': 'silu',
        'hidden_size': 64,
        'initializer_range': 0.02,
        'intermediate_size': 128,
        'max_position_embeddings': 32768,
        'max_window_layers': 70,
        'model_type': 'qwen2_5_vl',
        'num_attention_heads': 4,
        'num_hidden_layers': 2,
        'num_key_value_heads': 2,
        'rms_norm_eps': 1e-06,
        'rope_theta': 1000000.0,
        'sliding_window': 32768,
        'tie_word_embeddings': True,
        'torch_dtype': 'float32',
        'use_cache': True,
        'use_sliding_window': False,
        'vision_config': {
            'depth': 2,
            'hidden_act': 'silu',
            'hidden_size': 32,
            'intermediate_size': 64,
            'num_heads': 2,
            'in_chans': 3,
            'out_hidden_size': 64,
            'patch_size': 14,
            'spatial_merge_size': 2,
            'spatial_patch_size': 14,
            'window_size': 112,
            'fullatt_block_indexes': [1],
            'tokens_per_second': 2,
            'temporal_patch_size': 2,
        },
        # head_dim 16 -> 8 rotary frequencies, split 2 (t) + 3 (h) + 3 (w).
        'rope_scaling': {'type': 'mrope', 'mrope_section': [2, 3, 3]},
        'vocab_size': vocab_size,
    }


def generation_config(ids: dict[str, int]) -> dict:
    """generation_config.json with the real model's sampling values and its two eos ids."""
    return {
        'bos_token_id': ids['<|endoftext|>'],
        'pad_token_id': ids['<|endoftext|>'],
        'do_sample': True,
        'eos_token_id': [ids['<|im_end|>'], ids['<|endoftext|>']],
        'repetition_penalty': 1.05,
        'temperature': 0.1,
        'top_p': 0.001,
        'top_k': 1,
    }


@torch.no_grad()
def redraw_weights(model: torch.nn.Module, seed: int) -> None:
    """Draw every parameter anew: norm gains 1 + 0.1*N(0,1), all else (biases too) 0.2*N(0,1)."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():  # tied weights are listed once
        noise = torch.randn(param.shape, generator=gen, dtype=param.dtype)
        is_norm_gain = name.endswith('.weight') and param.dim() == 1
        param.copy_(1.0 + NORM_GAIN_STD * noise if is_norm_gain else WEIGHT_STD * noise)


def build_tiny_checkpoint(out_dir, seed: int = 0) -> Path:
    """Write the tiny checkpoint directory `out_dir` (created if needed) and return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in tokenizer.all_special_tokens}
    config = tiny_config(ids, vocab_size=len(tokenizer))

    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig.from_dict(config)).float().eval()
    redraw_weights(model, seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # save_pretrained writes the nested layout of the installed transformers; keep the real one.
    _write_json(out / 'config.json', config)
    _write_json(out / 'generation_config.json', generation_config(ids))
    _write_json(out / 'preprocessor_config.json', PREPROCESSOR_CONFIG)
    return out


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + '\n')


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', required=True, help='directory to write the checkpoint into')
    parser.add_argument('--seed', type=int, default=0, help='seed of the random weights')
    args = parser.parse_args(argv)
    print(build_tiny_checkpoint(args.out, seed=args.seed))


if __name__ == '__main__':
    main()
