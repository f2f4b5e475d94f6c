"""transformers' Qwen2.5-VL processors for images only, under 4.x and 5.x alike, no torchvision.

transformers 5.x's Qwen2VLImageProcessor (and the processor's video part) need torchvision,
which the venvs here do not have (a multi-GB CUDA pull); its Qwen2VLImageProcessorPil is the
numpy/PIL one 4.x called Qwen2VLImageProcessor.
"""
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.processing_utils import ProcessorMixin


def image_processor_class():
    """Return transformers' Qwen2-VL image processor class that runs without torchvision."""
    try:  # 5.x
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
            Qwen2VLImageProcessorPil)
        return Qwen2VLImageProcessorPil
    except ImportError:  # 4.x
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
        return Qwen2VLImageProcessor


def video_frames_supported() -> bool:
    """Tell whether the image processor takes videos= (4.x); 5.x has a torchvision one for it."""
    return image_processor_class().__name__ == 'Qwen2VLImageProcessor'


def rope_index(model, input_ids, image_grid_thw=None, video_grid_thw=None,
               second_per_grid_ts=None, attention_mask=None):
    """Return transformers' (position_ids (3, B, T), deltas) from `get_rope_index`, 4.x or 5.x.

    5.x wants `mm_token_type_ids` (text 0, image 1, video 2: modeling_qwen2_5_vl.py), which
    its processor returns; 4.x finds the image and video tokens in input_ids itself.
    """
    import inspect
    kw = dict(image_grid_thw=image_grid_thw, video_grid_thw=video_grid_thw,
              second_per_grid_ts=second_per_grid_ts, attention_mask=attention_mask)
    if 'mm_token_type_ids' in inspect.signature(model.model.get_rope_index).parameters:
        config = model.config
        kw['mm_token_type_ids'] = ((input_ids == config.image_token_id).int()
                                   + 2 * (input_ids == config.video_token_id).int())
    return model.model.get_rope_index(input_ids, **kw)


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
