"""Differentiable Neural Computer memory (Graves et al. 2016)."""
