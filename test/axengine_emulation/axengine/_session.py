"""InferenceSession: pyaxengine's onnxruntime-like front; the provider session is ``_sess``."""

from __future__ import annotations

from ._base_session import SessionOptions
from ._providers import axengine_provider_name, get_available_providers


class InferenceSession:
    """Load a model with the first available (or the named) provider."""

    def __init__(self, path_or_bytes, sess_options: SessionOptions | None = None,
                 providers=None, provider_options=None, **kwargs) -> None:
        available = get_available_providers()
        chosen, chosen_opts = None, None
        if providers is None:
            chosen = available[0]
        elif isinstance(providers, str):
            if providers not in available:
                raise ValueError(f"Selected provider: '{providers}' is not available.")
            chosen = providers
        else:
            for p in providers:
                name, opts = (p, None) if isinstance(p, str) else p
                if name in available and chosen is None:
                    chosen, chosen_opts = name, opts
            if chosen is None:
                raise ValueError(f'Selected provider(s): {providers} is(are) not available.')
        self._provider = chosen
        self._sess_options = sess_options
        opts = chosen_opts or (provider_options[0] if provider_options else None)
        if chosen != axengine_provider_name:
            raise RuntimeError(f'Create session failed with provider: {chosen}')
        from ._axe import AXEngineSession
        self._sess = AXEngineSession(path_or_bytes, sess_options, opts, **kwargs)

    def __enter__(self):
        self._sess.__enter__()
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        return self._sess.__exit__(exc_type, exc_value, traceback)

    def get_providers(self):
        """Return the name of the provider in use."""
        return self._provider

    def get_inputs(self, shape_group: int = 0) -> list:
        """Return the inputs of one shape group."""
        return self._sess.get_inputs(shape_group)

    def get_outputs(self, shape_group: int = 0) -> list:
        """Return the outputs of one shape group."""
        return self._sess.get_outputs(shape_group)

    def run(self, output_names, input_feed, run_options=None, shape_group: int = 0) -> list:
        """Run one shape group (see AXEngineSession.run)."""
        return self._sess.run(output_names, input_feed, run_options, shape_group)
