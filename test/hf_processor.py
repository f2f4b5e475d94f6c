"""transformers' Qwen2.5-VL processor for images only, under 4.x and 5.x alike.

Its own module so that bench/fullsize_steps.py can use it under transformers 5.x without
torchvision, where test/hf_reference.py (which imports 4.x's Qwen2VLImageProcessor) cannot
be imported.
"""
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.processing_utils import ProcessorMixin


class ImageOnlyProcessor(Qwen2_5_VLProcessor):
    """Qwen2_5_VLProcessor without its video processor (that one needs torchvision)."""

    attributes = ['image_processor', 'tokenizer']
    tokenizer_class = ('PreTrainedTokenizerFast', 'Qwen2TokenizerFast')

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = '<|image_pad|>'
        self.video_token = '<|video_pad|>'
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)
