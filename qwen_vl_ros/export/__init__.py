"""Hugging Face Qwen2.5-VL checkpoint -> ONNX stand-ins of the AX650N axmodels (needs torch).

`cli` is the `qwen-vl-export` command; `tiny` builds a tiny random-weight checkpoint to export.
Nothing here is imported by the run-time core (qwen_vl_ros.vlm).
"""
