"""Applications over the pipeline that the CLI exposes: interactive chat, batch captioning, grounding, info.

Must not: parse command lines (cli.py does) or hold model logic (pipeline / engine do).
"""
