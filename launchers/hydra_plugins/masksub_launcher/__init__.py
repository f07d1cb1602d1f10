"""Hydra launcher plugin of masksub-exp (Hydra only loads plugins from the hydra_plugins namespace)."""
