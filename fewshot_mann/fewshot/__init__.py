"""Few-shot classifiers fitted to a support set and asked about queries (easyfsl's shape), batched over
trials: nearest centroid and logistic regression, the honest baselines printed beside every model
(``baselines.py``)."""
from fewshot_mann.fewshot.centroid import centroid_scores
from fewshot_mann.fewshot.logistic import fit_logistic, logistic_scores

__all__ = ["centroid_scores", "fit_logistic", "logistic_scores"]
