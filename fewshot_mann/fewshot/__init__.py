"""Few-shot classifiers fitted to a support set and asked about queries (easyfsl's shape), batched over
trials: nearest centroid and logistic regression, the honest baselines printed beside every model
(``engine/baselines.py``). One interface, ``base.FewShotClassifier``: ``fit`` on support sets, then
``scores`` of queries."""
from fewshot_mann.fewshot.base import FewShotClassifier
from fewshot_mann.fewshot.centroid import NearestCentroid, centroid_scores
from fewshot_mann.fewshot.logistic import LogisticRegression, fit_logistic, logistic_scores, prefix_logistic_scores

__all__ = ["FewShotClassifier", "LogisticRegression", "NearestCentroid", "centroid_scores", "fit_logistic",
           "logistic_scores", "prefix_logistic_scores"]
