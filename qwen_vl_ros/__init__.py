"""qwen_vl_ros: Qwen2.5-VL vision-language descriptions of a camera topic."""
