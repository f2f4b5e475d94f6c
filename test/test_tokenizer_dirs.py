"""Tokenizer directories written by any transformers 4.49..5.x or AXERA load alike (issue 9, 10).

Each variant is built here from the same tokenizer, as JSON files laid out the way each writer
lays them out (no torch, no transformers save: the files themselves are the subject), and must
give identical prompt ids and rendered template under whichever transformers major is installed
(this file also runs in a transformers-5 venv). The expectation comes from transformers itself
on the source tokenizer (its own tokenization of its own rendering of the multimodal template).

Variants: tokenizer_class Qwen2Tokenizer / TokenizersBackend, extra_special_tokens list or dict
or absent, chat template in chat_template.json / chat_template.jinja / tokenizer_config.json
(string or named list) next to a text-only one, added_tokens_decoder present or not,
special_tokens_map.json present or not, tokenizer.json or only vocab.json + merges.txt; and
config.json flat (4.x) or with a nested text_config (5.x).
"""
import json
from pathlib import Path

import pytest

from qwen_vl_ros.export.tokenizer import QWEN2_5_VL_CHAT_TEMPLATE, build_tokenizer
from qwen_vl_ros.vlm.errors import ModelDirError
from qwen_vl_ros.vlm.model_dir import parse_text_config
from qwen_vl_ros.vlm.prompt import PromptBuilder, VisionBlock, load_tokenizer

REAL = Path(__file__).resolve().parents[2] / 'shared' / 'qwen2_5_vl_3b'
# Qwen2.5's tokenizer_config.json template: text content only (a list of parts fails in it).
TEXT_ONLY = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
             "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
             "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
PROMPTS = ['Describe this image.', 'Is the door open?\nAnswer yes or no.', ' spaced  out ',
           'Ünïcödé 猫 🤖']
BLOCKS = [(), (VisionBlock('image', 1, 4, 4),), (VisionBlock('video', 2, 4, 4, 1.0),)]


# -- the source tokenizer and what transformers makes of it ---------------------------------
@pytest.fixture(scope='module', params=['tiny', 'real'])
def source(request, tmp_path_factory):
    """(tokenizer.json text, multimodal template, transformers tokenizer of the source)."""
    from transformers import AutoTokenizer
    if request.param == 'tiny':
        tok = build_tokenizer()
        template = QWEN2_5_VL_CHAT_TEMPLATE
    else:
        if not (REAL / 'vocab.json').exists():
            pytest.skip(f'the real Qwen2.5-VL-3B tokenizer is not at {REAL}')
        tok = AutoTokenizer.from_pretrained(str(REAL), local_files_only=True)
        template = json.loads((REAL / 'chat_template.json').read_text())['chat_template']
    tok.chat_template = template
    return tok.backend_tokenizer.to_str(), template, tok, request.param


def reference(tok, prompt, blocks):
    """Return transformers' rendering and ids (ordinary prompts: no special-token strings)."""
    content = [{'type': b.kind} for b in blocks] + [{'type': 'text', 'text': prompt}]
    text = tok.apply_chat_template([{'role': 'user', 'content': content}], tokenize=False,
                                   add_generation_prompt=True)
    return text, list(tok(text, add_special_tokens=False)['input_ids'])


# -- the writers --------------------------------------------------------------------------------
SPECIALS = ['<|im_start|>', '<|im_end|>', '<|object_ref_start|>', '<|object_ref_end|>',
            '<|box_start|>', '<|box_end|>', '<|quad_start|>', '<|quad_end|>', '<|vision_start|>',
            '<|vision_end|>', '<|vision_pad|>', '<|image_pad|>', '<|video_pad|>']


def added_tokens_decoder(tokenizer_json: dict) -> dict:
    return {str(t['id']): {k: t[k] for k in ('content', 'lstrip', 'normalized', 'rstrip',
                                              'single_word', 'special')}
            for t in tokenizer_json['added_tokens']}


def write_vocab_merges(d: Path, tokenizer_json: dict) -> None:
    """vocab.json + merges.txt (what the slow Qwen2Tokenizer and AXERA's releases carry)."""
    model = tokenizer_json['model']
    (d / 'vocab.json').write_text(json.dumps(model['vocab'], ensure_ascii=False))
    merges = [m if isinstance(m, str) else ' '.join(m) for m in model['merges']]
    (d / 'merges.txt').write_text('#version: 0.2\n' + '\n'.join(merges) + '\n')


def write_variant(d: Path, variant: str, tokenizer_str: str, template: str) -> Path:
    d.mkdir(parents=True)
    tj = json.loads(tokenizer_str)
    base = {'bos_token': None, 'eos_token': '<|im_end|>', 'pad_token': '<|endoftext|>',
            'unk_token': None, 'clean_up_tokenization_spaces': False,
            'model_max_length': 32768, 'split_special_tokens': False}
    v4 = dict(base, tokenizer_class='Qwen2Tokenizer', errors='replace', add_prefix_space=False,
              added_tokens_decoder=added_tokens_decoder(tj), additional_special_tokens=SPECIALS)
    v5 = dict(base, backend='tokenizers', extra_special_tokens=SPECIALS)
    special_map = {'eos_token': '<|im_end|>', 'pad_token': '<|endoftext|>',
                   'additional_special_tokens': SPECIALS}
    files = {}
    if variant == 'hub_4.49':          # the model repo: processor template in .json
        files = {'tokenizer.json': tokenizer_str, 'special_tokens_map.json': special_map,
                 'tokenizer_config.json': dict(v4, chat_template=TEXT_ONLY),
                 'chat_template.json': {'chat_template': template}}
        write_vocab_merges(d, tj)
    elif variant == 'saved_4.57':      # save_pretrained: .jinja, extra_special_tokens {}
        files = {'tokenizer.json': tokenizer_str, 'special_tokens_map.json': special_map,
                 'tokenizer_config.json': dict(v4, extra_special_tokens={}),
                 'chat_template.jinja': template}
    elif variant == 'saved_4.57_named':  # extra_special_tokens as 4.x's dict of named tokens
        files = {'tokenizer.json': tokenizer_str,
                 'tokenizer_config.json': dict(v4, extra_special_tokens={
                     'image_token': '<|image_pad|>', 'video_token': '<|video_pad|>'}),
                 'chat_template.json': {'chat_template': template}}
    elif variant == 'saved_5.x':       # TokenizersBackend, list, no decoder, no special map
        files = {'tokenizer.json': tokenizer_str, 'chat_template.jinja': template,
                 'tokenizer_config.json': dict(v5, tokenizer_class='TokenizersBackend')}
    elif variant == 'saved_5.x_qwen':
        files = {'tokenizer.json': tokenizer_str, 'chat_template.jinja': template,
                 'tokenizer_config.json': dict(v5, tokenizer_class='Qwen2Tokenizer')}
    elif variant == 'saved_5.x_text_only_in_config':
        files = {'tokenizer.json': tokenizer_str, 'chat_template.jinja': template,
                 'tokenizer_config.json': dict(v5, tokenizer_class='TokenizersBackend',
                                               chat_template=TEXT_ONLY)}
    elif variant == 'axera':           # vocab + merges only, added_tokens_decoder, .json
        files = {'tokenizer_config.json': dict(v4, chat_template=TEXT_ONLY),
                 'chat_template.json': {'chat_template': template}}
        write_vocab_merges(d, tj)
    elif variant == 'template_in_config':
        files = {'tokenizer.json': tokenizer_str,
                 'tokenizer_config.json': dict(v4, chat_template=template)}
    elif variant == 'template_list_in_config':
        files = {'tokenizer.json': tokenizer_str,
                 'tokenizer_config.json': dict(v5, tokenizer_class='TokenizersBackend',
                                               chat_template=[{'name': 'default',
                                                               'template': template}])}
    elif variant == 'text_only_jinja_multimodal_json':
        files = {'tokenizer.json': tokenizer_str, 'chat_template.jinja': TEXT_ONLY,
                 'tokenizer_config.json': dict(v4), 'chat_template.json': {
                     'chat_template': template}}
    else:
        raise AssertionError(variant)
    for name, content in files.items():
        text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
        (d / name).write_text(text, encoding='utf-8')
    return d


VARIANTS = ['hub_4.49', 'saved_4.57', 'saved_4.57_named', 'saved_5.x', 'saved_5.x_qwen',
            'saved_5.x_text_only_in_config', 'axera', 'template_in_config',
            'template_list_in_config', 'text_only_jinja_multimodal_json']


# With the real vocabulary (3 s a load), the variants that take different loading paths: the
# hub layout (AutoTokenizer, Qwen2), 5.x's two classes with the list, AXERA's vocab + merges.
REAL_VARIANTS = ('hub_4.49', 'saved_5.x', 'saved_5.x_qwen', 'axera')


@pytest.mark.parametrize('variant', VARIANTS)
def test_every_variant_gives_the_same_ids_and_rendering(source, variant, tmp_path):
    tokenizer_str, template, ref_tok, name = source
    if name == 'real' and variant not in REAL_VARIANTS:
        pytest.skip('same loading path as a real-vocabulary variant; covered with the tiny one')
    d = write_variant(tmp_path / variant, variant, tokenizer_str, template)
    tok = load_tokenizer(str(d))
    assert tok.eos_token == '<|im_end|>' and tok.pad_token == '<|endoftext|>'
    assert tok.convert_tokens_to_ids('<|image_pad|>') == \
        ref_tok.convert_tokens_to_ids('<|image_pad|>')
    cfg = parse_text_config({
        'hidden_size': 64, 'num_hidden_layers': 1, 'num_attention_heads': 2,
        'vocab_size': len(ref_tok),
        'image_token_id': ref_tok.convert_tokens_to_ids('<|image_pad|>'),
        'video_token_id': ref_tok.convert_tokens_to_ids('<|video_pad|>'),
        'vision_start_token_id': ref_tok.convert_tokens_to_ids('<|vision_start|>'),
        'vision_end_token_id': ref_tok.convert_tokens_to_ids('<|vision_end|>')})
    builder = PromptBuilder(tok, cfg)
    for blocks in BLOCKS:
        for prompt in PROMPTS:
            text, ids = reference(ref_tok, prompt, blocks)
            assert builder.text(prompt, '', blocks) == text, (variant, prompt)
            assert builder.ids(prompt, '', blocks) == ids, (variant, prompt)
    # special tokens are skipped when decoding, as with the source
    sample = ref_tok('<|im_start|>hi<|im_end|>', add_special_tokens=False)['input_ids']
    assert tok.decode(sample, skip_special_tokens=True) == \
        ref_tok.decode(sample, skip_special_tokens=True)


def test_only_a_text_only_template_is_a_clear_error(source, tmp_path):
    tokenizer_str, template, _, _ = source
    d = write_variant(tmp_path / 'v', 'saved_5.x', tokenizer_str, template)
    (d / 'chat_template.jinja').write_text(TEXT_ONLY)
    with pytest.raises(ModelDirError, match='no chat template renders image'):
        load_tokenizer(str(d))


def test_config_flat_or_with_nested_text_config():
    if not (REAL / 'config.json').exists():
        pytest.skip(f'the real config is not at {REAL}')
    flat = json.loads((REAL / 'config.json').read_text())
    text_keys = ('hidden_size', 'num_hidden_layers', 'num_attention_heads',
                 'num_key_value_heads', 'vocab_size', 'intermediate_size', 'rope_theta',
                 'max_position_embeddings', 'rms_norm_eps', 'rope_scaling')
    nested = {k: v for k, v in flat.items() if k not in text_keys}
    nested['text_config'] = {k: flat[k] for k in text_keys if k in flat}
    # 5.x also repeats the token ids inside text_config
    nested['text_config'].update(image_token_id=flat['image_token_id'],
                                 video_token_id=flat['video_token_id'])
    want = parse_text_config(flat)
    assert parse_text_config(nested) == want
    assert (want.hidden_size, want.num_layers, want.vocab_size, want.image_token_id) == \
        (2048, 36, 151936, 151655)
