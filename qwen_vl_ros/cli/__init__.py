"""Command-line tools: qwen-vl-describe."""
