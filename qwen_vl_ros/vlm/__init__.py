"""ROS-free core: the Qwen2.5-VL axmodel pipeline on any runtime (no rclpy, no torch)."""

from .errors import ImageError, ModelDirError, PromptTooLongError, RuntimeFailure, VLMError
from .pipeline import GenerationOptions, Pipeline, Result
from .vision import RESIZE_MODES

__all__ = ['Pipeline', 'GenerationOptions', 'Result', 'VLMError', 'ModelDirError', 'ImageError',
           'PromptTooLongError', 'RuntimeFailure', 'RESIZE_MODES']
