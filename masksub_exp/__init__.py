"""masksub-exp: one training engine with MaskSub as a pluggable sub-branch, driven by Hydra."""

__version__ = "0.1.0"
