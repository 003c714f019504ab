"""qwenvl: Qwen-VL, Qwen2-VL and Qwen2.5-VL in one small PyTorch codebase."""

__version__ = "0.1.0"
