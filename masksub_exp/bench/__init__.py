"""Benchmarks: the training step on a resident batch (step.py); the input pipeline, presets end to end (loader.py)."""
