"""Benchmarks: the training step on a resident batch (step.py), the input pipeline and presets end to end (loader.py)."""
