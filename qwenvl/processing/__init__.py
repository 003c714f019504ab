"""Preprocessing: images and video become pixel tensors here (and text becomes ids in sibling modules).

Training, the CLI and the server all call this package, so there is one preprocessing path and no
train/serve skew. Nothing here imports the model.
"""
