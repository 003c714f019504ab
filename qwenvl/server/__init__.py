"""OpenAI-compatible HTTP server and web page over the engine (FastAPI + uvicorn, the `serve` extra).

    qwenvl serve qwenvl-tiny --port 8000 --api-key KEY
    app = qwenvl.server.app.create_app(pipe, ServerOptions(api_key="KEY"))   # an ASGI app for tests / uvicorn

Holds no model logic: requests are parsed (protocol.py), images fetched under a policy (images.py),
rendered by the processor, run by the engine on one thread (runner.py) and shaped back (responses.py).
Nothing is imported at package import: FastAPI is optional.
"""
