"""Which of pyaxengine's execution providers, and which M.2 card, runs the models.

Light on purpose (no pyaxengine, no numpy): the ROS parameters and the CLI read the choices.
"""

from __future__ import annotations

from ..errors import ModelDirError

# The board's own NPU (libax_engine), the M.2 card through the AXCL runtime (libaxcl_rt).
NPU_PROVIDERS = ('auto', 'AxEngineExecutionProvider', 'AXCLRTExecutionProvider')


def npu_choice(npu_provider: str = 'auto', npu_device: int = 0) -> tuple:
    """Return (providers, provider_options) for pyaxengine's InferenceSession.

    ``npu_provider``: one of NPU_PROVIDERS; ``auto`` lets pyaxengine choose (0.1.3.rc3: the
    card's AXCLRT when ``/dev/axcl_host`` exists or ``libaxcl_rt`` is the only runtime
    library, else the board's AxEngine). ``npu_device``: the card's index in
    ``axclrtGetDeviceList`` (0.1.3.rc3's AXCLRTSession reads ``provider_options[0]
    ['device_id']`` as that index; the board's provider ignores it). Raises ModelDirError on a
    value outside those.
    """
    if npu_provider not in NPU_PROVIDERS:
        raise ModelDirError(f'npu_provider {npu_provider!r} is not one of '
                            f'{", ".join(NPU_PROVIDERS)}')
    if int(npu_device) < 0:
        raise ModelDirError(f'npu_device must be a card index >= 0, got {npu_device}')
    providers = None if npu_provider == 'auto' else [npu_provider]
    options = [{'device_id': int(npu_device)}] if npu_device else None
    return providers, options
