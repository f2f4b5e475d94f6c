"""ROS-free core: Qwen2.5-VL axmodel pipeline on any runtime."""
