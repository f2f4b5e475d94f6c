"""An emulation of pyaxengine (``import axengine``) backed by onnxruntime: see ../README.md.

``AXENGINE_EMULATION_API`` picks the API generation at import: ``current`` (default; pyaxengine
with shape groups, ``InferenceSession(path, providers=...)``) or ``legacy`` (the older wheel's
``InferenceSession.load_from_model`` / ``set_runtime_context`` / ``run(feed)``).
"""

import os

from ._providers import axclrt_provider_name, axengine_provider_name  # noqa: F401
from ._providers import get_all_providers, get_available_providers  # noqa: F401

_available_providers = get_available_providers()
if not _available_providers:
    raise ImportError('No providers found. Please make sure you have installed one of the '
                      f'following: {get_all_providers()}')

from ._device import STATS as EMULATION_STATS  # noqa: E402,F401
from ._node import NodeArg  # noqa: E402,F401

EMULATION_API = os.environ.get('AXENGINE_EMULATION_API', 'current')
if EMULATION_API == 'legacy':
    from ._legacy import _C, InferenceSession  # noqa: F401
elif EMULATION_API == 'current':
    from ._session import InferenceSession, SessionOptions  # noqa: F401
else:
    raise ImportError(f'AXENGINE_EMULATION_API={EMULATION_API!r}: use current or legacy')
