"""Core results and errors -> ROS messages and reply texts."""

from __future__ import annotations

from qwen_vl_interfaces.msg import Description
from std_msgs.msg import String

from ..vlm.constrain import ConstraintError, grammar_for
from ..vlm.errors import (ImageError, ModelDirError, PromptError, PromptTooLongError,
                          RuntimeFailure, VLMError)
from .worker import Cancelled, NotAnAnswer, RuntimeHung

TIMER = 'timer'
SERVICE = 'service'


def ros_string(text: str) -> str:
    """Return ``text`` safe for a ROS string field.

    rosidl strings end at the first NUL, so a U+0000 in generated text would silently cut the
    rest off; it becomes U+FFFD (the replacement character) instead.
    """
    return text.replace('\x00', '\ufffd')


def description_msg(result, header, prompt: str, trigger: str,
                    convert_ms: float = 0.0, choices=()) -> Description:
    """Build the Description of ``result``.

    ``header`` is the source image's; ``convert_ms`` the time spent turning the image message
    into an array (part of the host-side preprocessing).
    """
    t = result.timings_ms
    msg = Description()
    msg.header = header
    msg.prompt = prompt
    msg.text = ros_string(result.text)
    msg.finish_reason = result.finish_reason
    msg.prompt_tokens = int(result.prompt_tokens)
    msg.generated_tokens = len(result.token_ids)
    msg.preprocess_ms = float(convert_ms + t.get('preprocess', 0.0))
    msg.vision_ms = float(t.get('vision', 0.0))
    msg.time_to_first_token_ms = float(convert_ms + t.get('time_to_first_token', 0.0))
    msg.decode_ms = float(t.get('decode', 0.0))
    msg.tokens_per_second = float(result.tokens_per_second)
    msg.trigger = trigger
    msg.choices = list(choices or ())
    msg.choice_index = int(getattr(result, 'choice_index', -1))
    return msg


def unanswered_msg(header, prompt: str, trigger: str, finish_reason: str) -> Description:
    """Return the Description of a question that ended before its first token (no text)."""
    msg = Description()
    msg.header = header
    msg.prompt = prompt
    msg.finish_reason = finish_reason
    msg.trigger = trigger
    msg.choice_index = -1
    return msg


def text_msg(text: str) -> String:
    return String(data=ros_string(text))


# error class -> (counter, reply prefix); the first match wins (subclasses first)
_KINDS = (
    (ImageError, 'image_errors', 'bad image'),
    (PromptTooLongError, 'prompt_errors', 'prompt too long'),
    (PromptError, 'prompt_errors', 'bad prompt'),
    (ConstraintError, 'request_errors', 'bad constraint'),
    (RuntimeFailure, 'runtime_errors', 'runtime error'),
    (ModelDirError, 'runtime_errors', 'model error'),
    (VLMError, 'runtime_errors', 'error'),
    (Cancelled, 'cancelled', 'cancelled'),
    (NotAnAnswer, 'answers_cut', ''),      # its message says what was cut and why
    (RuntimeHung, 'runtime_errors', 'runtime hung'),
)


def error_kind(error: BaseException) -> tuple[str, str]:
    """(counter name, reason text) for an error a job raised."""
    for cls, counter, prefix in _KINDS:
        if isinstance(error, cls):
            return counter, f'{prefix}: {one_line(error)}' if prefix else one_line(error)
    return 'internal_errors', f'internal error: {type(error).__name__}: {one_line(error)}'


def one_line(error: BaseException | str) -> str:
    """Return the message of ``error`` on one line."""
    return ' '.join(str(error).split()) or type(error).__name__


def request_constraint(request) -> tuple[dict, str | None]:
    """Return a ~/describe request's typed-answer fields: ({field: value}, None) or ({}, why).

    Empty fields = the parameters' constraint. Checked here so that a bad schema or regex is
    answered at once, before the request waits for the model.
    """
    fields = {'choices': tuple(c for c in request.choices if c.strip()),
              'json_schema': request.json_schema, 'regex': request.regex}
    given = {k: v for k, v in fields.items() if v}
    try:
        grammar_for(**given)
    except ConstraintError as e:
        return {}, f'bad constraint: {e}'
    return given, None
