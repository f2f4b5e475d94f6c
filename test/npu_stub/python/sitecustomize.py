"""Registers the stub NPU (npu_host.py) at interpreter start when AX_STUB_NPU=1.

scripts/with_npu_stub.sh puts this directory on PYTHONPATH and sets AX_STUB_NPU=1, so any
Python it starts (qwen-vl-describe, the node, a test driver) has an "NPU" behind the stub
libax_engine.so before pyaxengine is imported. Nothing happens without AX_STUB_NPU=1.
"""
import os

if os.environ.get('AX_STUB_NPU') == '1':
    import npu_host

    npu_host.install()
