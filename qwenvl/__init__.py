"""qwenvl: Qwen-VL, Qwen2-VL and Qwen2.5-VL in one small PyTorch codebase.

    import qwenvl
    pipe = qwenvl.load("path/to/checkpoint")
    print(pipe.chat([{"role": "user", "content": [{"type": "image", "image": "cat.png"},
                                                  {"type": "text", "text": "What is this?"}]}]).text)
"""

from qwenvl.pipeline import ChatResult, Pipeline, load

__version__ = "0.1.0"
__all__ = ["ChatResult", "Pipeline", "load"]
