"""Training, evaluation, k-shot, prediction, checkpoints, distributed runs."""
