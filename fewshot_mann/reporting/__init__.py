"""Evaluation records, tables and plots."""
