"""The errors a user of the core can cause, each with a message that says what and why."""


class VLMError(Exception):
    """Base of every error the core raises on purpose; the node turns it into a reply."""


class ModelDirError(VLMError):
    """The model directory is missing files or holds files that do not fit together."""


class OptionsError(VLMError):
    """A generation option no request can be served with (e.g. max_new_tokens 0)."""


class ImageError(VLMError):
    """An input image cannot be used (bad size, encoding, data or too many pixels)."""


class PromptError(VLMError):
    """The prompt cannot be built (e.g. the system prompt holds vision pad tokens)."""


class PromptTooLongError(VLMError):
    """The prompt does not fit into what the compiled models can prefill."""


class RuntimeFailure(VLMError):
    """The inference runtime failed while running a model."""


class NonFiniteOutput(RuntimeFailure):
    """A model returned NaN or Inf values: the runtime (or the NPU) produced garbage."""
