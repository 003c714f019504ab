"""Evaluation: metric functions (metrics.py, vqa_norm.py, cider.py) and the evaluation runner.

Metrics are pure Python/numpy on strings and numbers; nothing here imports the model.
"""
