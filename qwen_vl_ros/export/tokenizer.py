"""A small byte-level BPE tokenizer shaped like Qwen2.5-VL's, trained offline.

Same pre-tokenizer regex, byte-level alphabet, decoder and special tokens (in Qwen's order, right
after the learned vocabulary) as the real tokenizer, but only a few hundred merges learned from a
built-in English text, so a tiny test model gets a tokenizer in well under a second.
"""
from tokenizers import (Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers,
                        processors, trainers)
from transformers import PreTrainedTokenizerFast

# Qwen2's pre-tokenizer split (transformers' models/qwen2/tokenization_qwen2.py).
QWEN_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen2.5-VL's special tokens in the order of their ids (151643.. in the real vocabulary).
QWEN_SPECIAL_TOKENS = (
    '<|endoftext|>', '<|im_start|>', '<|im_end|>',
    '<|object_ref_start|>', '<|object_ref_end|>', '<|box_start|>', '<|box_end|>',
    '<|quad_start|>', '<|quad_end|>',
    '<|vision_start|>', '<|vision_end|>', '<|vision_pad|>', '<|image_pad|>', '<|video_pad|>',
)

# Qwen2.5-VL-3B-Instruct's chat_template.json, embedded: no copy of the real model is needed.
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Training text: the kind of sentences the node produces, plus digits and punctuation.
_CORPUS = """\
The image depicts a serene beach scene with a person and a dog sitting on the sand.
The person is wearing a plaid shirt and black pants, while the dog is wearing a harness.
The background features the ocean with gentle waves and a clear sky, suggesting a calm day.
The lighting indicates that it might be either early morning or late afternoon.
The image shows a street scene in an urban area with historical architecture.
A red double-decker bus is parked on the side of the street next to the sidewalk.
In front of the bus, there is a woman standing on the sidewalk and smiling at the camera.
The street is lined with buildings that have large windows and ornate stone details.
A black car is parked on the street, partially visible behind the woman.
The robot moves slowly through the corridor; a door on the left is open and the lights are on.
There are 3 people, 2 chairs and 1 table in the room. The time is 12:45 and it is raining!
Describe this image. What is in the picture? Is there anything unusual in the scene?
The camera looks at a kitchen: a white counter, a sink, a kettle and two cups of coffee.
A cat sleeps on the sofa near the window, and the sun shines on the green plants outside.
Cars, bicycles and pedestrians share the road at the crossing while the traffic light is red.
"""


def train_tokenizer(num_merges: int = 300) -> Tokenizer:
    """Train a Qwen-style byte-level BPE on the built-in text and append the special tokens."""
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior='isolated', invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=len(alphabet) + num_merges, min_frequency=1,
        initial_alphabet=alphabet, show_progress=False, special_tokens=[])
    tok.train_from_iterator(_CORPUS.splitlines(keepends=True), trainer=trainer)
    # Added after training so that their ids follow the learned vocabulary, as in Qwen's.
    tok.add_special_tokens(list(QWEN_SPECIAL_TOKENS))
    return tok


def build_tokenizer(num_merges: int = 300) -> PreTrainedTokenizerFast:
    """Wrap the trained tokenizer for transformers, with Qwen's eos/pad and chat template."""
    return PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(num_merges),
        eos_token='<|im_end|>', pad_token='<|endoftext|>', bos_token=None, unk_token=None,
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
        model_max_length=32768, clean_up_tokenization_spaces=False, split_special_tokens=False)
