"""Inference engine: owns the KV cache, sampling and the decode loop. Token ids and pixels in; no HTTP, no templates."""
