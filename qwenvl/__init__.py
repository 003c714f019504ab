"""qwenvl: Qwen-VL, Qwen2-VL, Qwen2.5-VL and Qwen3-VL in one small PyTorch codebase.

    import qwenvl
    pipe = qwenvl.load("path/to/checkpoint")                      # a local model
    pipe = qwenvl.connect("http://127.0.0.1:8000/v1", api_key=k)  # or any OpenAI-compatible server
    print(pipe.chat([{"role": "user", "content": [{"type": "image", "image": "cat.png"},
                                                  {"type": "text", "text": "What is this?"}]}]).text)
"""

from qwenvl.pipeline import ChatResult, Pipeline, load

__version__ = "0.1.0"
__all__ = ["ChatResult", "Pipeline", "connect", "load"]


def connect(url: str, api_key: str | None = None, model: str | None = None, family: str | None = None):
    """The same chat / stream / generate_batch API over an OpenAI-compatible server (ours, vLLM, a cloud's
    compatible mode), through the `openai` client: qwenvl.apps.remote.RemotePipeline."""
    from qwenvl.apps.remote import RemotePipeline

    return RemotePipeline(url, api_key=api_key, model=model, family=family)
