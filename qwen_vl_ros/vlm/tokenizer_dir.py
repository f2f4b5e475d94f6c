"""Load a Qwen2.5-VL tokenizer directory written by any transformers from 4.49 to 5.x, or AXERA.

What differs between the writers (and breaks loading under the other major):

- ``tokenizer_class``: ``Qwen2Tokenizer`` (4.x, AXERA, 5.x for Qwen models) or
  ``TokenizersBackend`` (5.x for a generic fast tokenizer), which 4.x does not have: it is read
  as transformers' generic fast tokenizer (``PreTrainedTokenizerFast``, 5.x's alias of
  ``TokenizersBackend``), or Qwen2's when only vocab.json + merges.txt are there.
- ``extra_special_tokens``: 4.x a dict of named tokens, 5.x a list (4.x's
  ``additional_special_tokens``); under 4.x a list becomes ``additional_special_tokens``.
- the chat template: processor files (chat_template.json, chat_template.jinja) or
  tokenizer_config.json (a string, or a list of named templates); Qwen2.5-VL's tokenizer
  template is text-only, so the template used is the first of these that renders an image
  (resolve_chat_template).
- ``added_tokens_decoder`` and special_tokens_map.json present (4.x) or not (5.x): transformers
  reads the added tokens from tokenizer.json, and eos/pad from tokenizer_config.json.

The result: identical prompt ids and rendered template whichever wrote the directory and
whichever major is installed (test/test_tokenizer_dirs.py builds each variant).
"""

from __future__ import annotations

import os

from .errors import ModelDirError
from .model_dir import read_json

# Messages a Qwen2.5-VL template must render: an image, a video and text (prompt.PromptBuilder).
_PROBE = [{'role': 'user', 'content': [{'type': 'image'}, {'type': 'video'},
                                       {'type': 'text', 'text': 'probe'}]}]


def _token_text(token) -> str:
    """Return a special token's text (tokenizer_config has strings or {"content": ...})."""
    return token.get('content', '') if isinstance(token, dict) else str(token)


def transformers_major() -> int:
    """Return the installed transformers' major version (4 or 5)."""
    import transformers
    return int(transformers.__version__.split('.')[0])


def load_kwargs(config: dict, major: int) -> dict:
    """Return overrides of tokenizer_config.json that let transformers ``major`` read it.

    Under 4.x, a 5.x ``extra_special_tokens`` list is merged into ``additional_special_tokens``
    (4.x calls ``.keys()`` on it). Nothing to change under 5.x (it reads 4.x files itself).
    """
    extra = config.get('extra_special_tokens')
    if major < 5 and isinstance(extra, list):
        additional = [_token_text(t) for t in config.get('additional_special_tokens') or []]
        additional += [t for t in map(_token_text, extra) if t not in additional]
        return {'extra_special_tokens': {}, 'additional_special_tokens': additional}
    return {}


def tokenizer_loader(tokenizer_dir: str, config: dict):
    """Return the class to load with: AutoTokenizer, unless it cannot know the class."""
    import transformers
    name = config.get('tokenizer_class')
    if not name or hasattr(transformers, name):
        return transformers.AutoTokenizer
    if os.path.exists(os.path.join(tokenizer_dir, 'tokenizer.json')):
        return transformers.PreTrainedTokenizerFast
    return getattr(transformers, 'Qwen2TokenizerFast', None) or transformers.Qwen2Tokenizer


def template_candidates(tokenizer_dir: str, config: dict) -> list:
    """(where, template) of every chat template in the directory, processor files first."""
    out = []
    json_path = os.path.join(tokenizer_dir, 'chat_template.json')
    if os.path.exists(json_path):
        value = read_json(json_path).get('chat_template')
        if isinstance(value, str):
            out.append(('chat_template.json', value))
    jinja_path = os.path.join(tokenizer_dir, 'chat_template.jinja')
    if os.path.exists(jinja_path):
        with open(jinja_path, encoding='utf-8') as f:
            out.append(('chat_template.jinja', f.read()))
    extra_dir = os.path.join(tokenizer_dir, 'additional_chat_templates')
    if os.path.isdir(extra_dir):   # transformers 4.5x+: named templates, one file each
        for name in sorted(os.listdir(extra_dir)):
            if name.endswith('.jinja'):
                with open(os.path.join(extra_dir, name), encoding='utf-8') as f:
                    out.append((f'additional_chat_templates/{name}', f.read()))
    value = config.get('chat_template')
    if isinstance(value, str):
        out.append(('tokenizer_config.json', value))
    elif isinstance(value, list):   # [{"name": "default", "template": "..."}, ...]
        for item in value:
            if isinstance(item, dict) and isinstance(item.get('template'), str):
                out.append((f'tokenizer_config.json ({item.get("name")})', item['template']))
    return out


def _render(tok, template: str, messages) -> str:
    return tok.apply_chat_template(messages, chat_template=template, tokenize=False,
                                   add_generation_prompt=True)


def resolve_chat_template(tok, tokenizer_dir: str, config: dict) -> str:
    """Return the first template that renders an image, a video and text.

    Qwen2.5-VL ships a text-only template in tokenizer_config.json (and transformers writes a
    tokenizer's template to chat_template.jinja), the multimodal one in the processor's
    chat_template.json / chat_template.jinja: which file holds which depends on the writer. A
    text-only template (it renders plain text but not image content) is passed over; a
    template that renders nothing at all is broken: ModelDirError, as is having no template
    that renders images.
    """
    candidates = template_candidates(tokenizer_dir, config)
    if not candidates:
        raise ModelDirError(f'{tokenizer_dir}: no chat template (chat_template.json, '
                            'chat_template.jinja or in tokenizer_config.json)')
    skipped = []
    for where, template in candidates:
        try:
            text = _render(tok, template, _PROBE)
            if '<|image_pad|>' in text and '<|video_pad|>' in text and 'probe' in text:
                return template
            problem = 'renders no image / video pad'
        except Exception as e:  # noqa: BLE001 - jinja2's TemplateError, TypeError, ...
            problem = f'{type(e).__name__}: {e}'
        try:   # text-only (Qwen2.5-VL's tokenizer template) or broken?
            _render(tok, template, [{'role': 'user', 'content': 'probe'}])
        except Exception as e:  # ImportError (no jinja2), TemplateError, ...
            raise ModelDirError(f'{tokenizer_dir}: the chat template does not render '
                                f'({where}): {type(e).__name__}: {e}') from e
        skipped.append(f'{where}: text-only ({problem})')
    raise ModelDirError(f'{tokenizer_dir}: no chat template renders image and video content: '
                        + '; '.join(skipped))


def load_tokenizer(tokenizer_dir: str):
    """Load the HF tokenizer offline with the multimodal chat template; ModelDirError if not."""
    config_path = os.path.join(tokenizer_dir, 'tokenizer_config.json')
    config = read_json(config_path) if os.path.exists(config_path) else {}
    loader = tokenizer_loader(tokenizer_dir, config)
    kwargs = load_kwargs(config, transformers_major())
    import transformers.utils.logging as hf_logging
    level = hf_logging.get_verbosity()
    if loader.__name__ != 'AutoTokenizer':
        # "the class you load from is not the same type": expected, that is the point
        hf_logging.set_verbosity_error()
    try:
        tok = loader.from_pretrained(tokenizer_dir, local_files_only=True, **kwargs)
    except Exception as e:  # transformers raises OSError/ValueError/... for broken dirs
        raise ModelDirError(f'cannot load the tokenizer from {tokenizer_dir}: {e}') from e
    finally:
        hf_logging.set_verbosity(level)
    tok.chat_template = resolve_chat_template(tok, tokenizer_dir, config)
    return tok
