"""Prompt ids and 3-D rope positions for Qwen2.5-VL, with the tokenizer from the model directory.

The chat template and the tokenizer are transformers' (what the model was trained with); the
only hand-written parts are expanding the image/video pad token to the vision token count (what
the HF processor does to the text), the rope positions, computed in numpy, and keeping user text
plain: special-token strings in a prompt (``<|im_end|>``, ``<|image_pad|>``, ...) are tokenized
as the characters they are, never as control tokens, so a prompt cannot end its own turn or
forge an assistant turn (the system prompt, the operator's, keeps its special tokens).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np

from .errors import ModelDirError, PromptError
from .model_dir import TextConfig


@dataclass(frozen=True)
class VisionBlock:
    """One image or video in the prompt: its kind and its patch grid (t groups, h, w patches)."""

    kind: str                       # 'image' or 'video'
    grid_t: int
    grid_h: int
    grid_w: int
    second_per_grid_t: float = 1.0  # video only: seconds one temporal group spans

    def tokens(self, merge: int) -> int:
        """Count the merged vision tokens the LLM sees for this block."""
        return self.grid_t * (self.grid_h // merge) * (self.grid_w // merge)


def keep_torch_out() -> None:
    """Stop transformers from importing torch, for processes that only need its tokenizers.

    transformers imports torch whenever it is installed (seconds of start-up and exit, hundreds
    of MB); the pipeline never needs it. Call before transformers is imported (the node's and
    the CLI's entry points do); a no-op afterwards, so a process that also runs transformers'
    models (the tests' reference) keeps them.
    """
    if 'transformers' in sys.modules:
        return
    for key in ('USE_TORCH', 'USE_TF', 'USE_FLAX'):
        os.environ.setdefault(key, '0')
    # transformers warns at import that it found no framework: expected here, so keep it quiet.
    verbosity = os.environ.get('TRANSFORMERS_VERBOSITY')
    os.environ['TRANSFORMERS_VERBOSITY'] = 'error'
    import transformers.utils.logging as hf_logging
    if verbosity is None:
        del os.environ['TRANSFORMERS_VERBOSITY']
    hf_logging.set_verbosity(hf_logging.log_levels.get(verbosity or 'warning',
                                                       hf_logging.WARNING))


def load_tokenizer(tokenizer_dir: str):
    """Load the HF tokenizer offline, with the multimodal chat template.

    Directories written by transformers 4.49..5.x and AXERA's releases load under either
    major (tokenizer_dir.load_tokenizer). The template is the first that renders image and
    video content, processor files first: Qwen2.5-VL ships a text-only template in
    tokenizer_config.json. Raises ModelDirError.
    """
    from .tokenizer_dir import load_tokenizer as load
    return load(tokenizer_dir)


def rope_positions(ids: np.ndarray, cfg: TextConfig, blocks: list) -> np.ndarray:
    """3-D (temporal, height, width) rope positions ``(3, T)`` for a prompt, as int64.

    Follows transformers 4.49-4.57 ``get_rope_index``, the rule the model was trained with and
    AXERA's demo uses: text tokens count up on all three rows; a vision block's tokens get
    (t * second_per_grid_t * tokens_per_second, row, column) offset by the text before it; text
    after a block restarts at the max of ALL the block's positions + 1. transformers 5.x
    advances by the spatial extent only, which differs for videos, so it is not followed here.
    For images the temporal index is 0. 4.57 truncates ``second_per_grid_t`` to an integer
    before multiplying; integral values (the default 1.0) give the same result either way.
    """
    merge = cfg.spatial_merge_size
    pad_ids = {cfg.image_token_id, cfg.video_token_id}
    out = np.empty((3, len(ids)), np.int64)
    start = 0      # next free position
    i = 0          # next token to place
    block_iter = iter(blocks)
    n = len(ids)
    while i < n:
        if ids[i] not in pad_ids:
            j = i
            while j < n and ids[j] not in pad_ids:
                j += 1
            out[:, i:j] = np.arange(start, start + j - i)
            start += j - i
            i = j
            continue
        block = next(block_iter, None)
        if block is None:
            raise PromptError('more vision pad runs in the prompt than vision blocks (does the '
                              'system prompt hold <|image_pad|> or <|video_pad|>?)')
        gh, gw = block.grid_h // merge, block.grid_w // merge
        count = block.grid_t * gh * gw
        step = 0.0 if block.kind == 'image' else block.second_per_grid_t * cfg.tokens_per_second
        t_idx = (np.arange(block.grid_t) * step).astype(np.int64)
        grid = np.stack(np.meshgrid(t_idx, np.arange(gh), np.arange(gw), indexing='ij'))
        out[:, i:i + count] = grid.reshape(3, count) + start
        start = int(out[:, i:i + count].max()) + 1
        i += count
    return out


# The question asked when none is given (the node's parameter prompt, qwen-vl-describe --prompt).
DEFAULT_PROMPT = 'Describe this image.'
# Stands for the user's text while the chat template is rendered (NULs: no prompt holds it).
USER_TEXT_SLOT = '\x00qwen_vl_ros user text\x00'


class PromptBuilder:
    """Turns (system prompt, user prompt, vision blocks) into token ids and rope positions."""

    def __init__(self, tokenizer, cfg: TextConfig):
        self.tokenizer = tokenizer
        self.cfg = cfg
        # every string the tokenizer matches as one added token (special or not)
        self._added = sorted(tokenizer.get_added_vocab(), key=len, reverse=True)

    def text(self, prompt: str, system_prompt: str = '', blocks: tuple = ()) -> str:
        """Render the chat-templated prompt, one pad token per vision block (not expanded)."""
        content = [{'type': b.kind} for b in blocks] + [{'type': 'text', 'text': prompt}]
        messages = []
        if system_prompt:
            messages.append({'role': 'system', 'content': system_prompt})
        messages.append({'role': 'user', 'content': content})
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True)

    def ids(self, prompt: str, system_prompt: str = '', blocks: tuple = ()) -> list:
        """Token ids of the rendered prompt (pads not expanded), the user text as plain text.

        The template is rendered around a placeholder; its text is tokenized as usual (special
        tokens are control tokens), the user text with special tokens split into ordinary
        tokens. The plain template text just before the user text ('user' and a newline) is
        tokenized together with it, as in one pass: a prompt without special-token strings gets
        exactly the ids of tokenizing the whole rendered text.
        """
        rendered = self.text(USER_TEXT_SLOT, system_prompt, blocks)
        parts = rendered.split(USER_TEXT_SLOT)
        if len(parts) != 2:
            raise ModelDirError(f'the chat template places the user text {len(parts) - 1} '
                                'times; expected once')
        head, tail = parts
        cut = max((head.rfind(t) + len(t) for t in self._added if t in head), default=0)
        return (self._encode(head[:cut], True) + self._encode(head[cut:] + prompt, False)
                + self._encode(tail, True))

    def _encode(self, text: str, special: bool) -> list:
        if not text:
            return []
        return list(self.tokenizer(text, add_special_tokens=False,
                                   split_special_tokens=not special)['input_ids'])

    def build(self, prompt: str, system_prompt: str = '', blocks: tuple = ()):
        """Return (ids int64 (T,), positions int64 (3, T)) with pads expanded per block.

        Raises PromptError when the template's vision pads do not match ``blocks``.
        """
        ids = self.ids(prompt, system_prompt, blocks)
        pad_ids = (self.cfg.image_token_id, self.cfg.video_token_id)
        expanded: list = []
        todo = iter(blocks)
        for tok in ids:
            if tok in pad_ids:
                block = next(todo, None)
                if block is None:
                    raise PromptError('the chat template emitted more vision pads than blocks '
                                      '(does the system prompt hold <|image_pad|> or '
                                      '<|video_pad|>?)')
                expanded.extend([tok] * block.tokens(self.cfg.spatial_merge_size))
            else:
                expanded.append(tok)
        arr = np.asarray(expanded, np.int64)
        return arr, rope_positions(arr, self.cfg, list(blocks))
