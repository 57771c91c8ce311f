"""Neural Turing Machine memory (Graves et al. 2014)."""
