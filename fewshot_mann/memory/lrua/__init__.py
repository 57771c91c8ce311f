"""Least Recently Used Access memory (Santoro et al. 2016)."""
