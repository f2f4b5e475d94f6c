"""Providers: the emulation offers the on-board NPU provider only."""

axengine_provider_name = 'AxEngineExecutionProvider'
axclrt_provider_name = 'AXCLRTExecutionProvider'
providers = [axengine_provider_name]


def get_all_providers() -> list:
    """Return every provider pyaxengine knows."""
    return [axengine_provider_name, axclrt_provider_name]


def get_available_providers() -> list:
    """Return the providers whose libraries are present (here: the emulated ax_engine)."""
    return list(providers)
