"""An independent notebook's plain-pixel baselines on the handwritten digits, compared with kshot's.

Written without the package (numpy, Pillow and scikit-learn only): it renders sklearn's digits as
``digits_folder.py`` describes (8 x 8 -> dark on light -> 32 x 32 bilinear), reads each as the plain
image at the Omniglot model's 20 x 20 (Pillow's box filter, no inversion, no re-framing, values in
[0, 1]), draws its own 5-way trials (15 queries a class, its own seed), and fits nearest centroid
(Euclidean) and ``sklearn.linear_model.LogisticRegression(C=1)`` on each trial's support alone. Then
it compares each number with the same baseline in a ``kshot --json`` file: the difference against the
two 95 % CIs combined (sqrt(ci_a^2 + ci_b^2)).

    python reports/scripts/digits_baselines_check.py KSHOT_JSON OUT_JSON [--episodes 600] [--seed 2027]
"""
import argparse
import datetime
import json
import math
import os
import platform
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")  # 1,200 small fits: threads only contend (before numpy loads BLAS)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import PIL  # noqa: E402
import sklearn  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402


def plain_digits(size: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, size*size) float64 in [0, 1], labels (n,)): each digit's PNG as a reader sees it."""
    digits = load_digits()
    rows = []
    for image in digits.images:
        ink = (255 - image * 255 / 16).clip(0, 255).astype(np.uint8)
        file_pixels = Image.fromarray(ink).resize((32, 32), Image.BILINEAR).convert("L")
        rows.append(np.asarray(file_pixels.resize((size, size), Image.BOX), dtype=np.float64).ravel() / 255.0)
    return np.stack(rows), digits.target.astype(int)


def trials(labels: np.ndarray, ways: int, shots: int, queries: int, episodes: int, seed: int):
    """Yield (support index (ways*shots,), support label, query index (ways*queries,), query label)."""
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(episodes):
        classes = rng.choice(len(by_class), ways, replace=False)
        s_idx, s_lab, q_idx, q_lab = [], [], [], []
        for j, c in enumerate(classes):
            pick = rng.choice(by_class[c], shots + queries, replace=False)
            s_idx.append(pick[:shots])
            q_idx.append(pick[shots:])
            s_lab += [j] * shots
            q_lab += [j] * queries
        yield np.concatenate(s_idx), np.array(s_lab), np.concatenate(q_idx), np.array(q_lab)


def mean_ci(per_trial: list[float]) -> tuple[float, float]:
    a = np.asarray(per_trial)
    return float(a.mean()), float(1.96 * a.std(ddof=1) / math.sqrt(len(a)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kshot_json")
    p.add_argument("out_json")
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--seed", type=int, default=2027)
    args = p.parse_args()
    x, y = plain_digits()
    kshot = json.load(open(args.kshot_json))
    rows, verdicts = [], []
    for shots in sorted({r["shots"] for r in kshot["baselines"]}):
        acc = {"nearest-centroid-raw-pixels": [], "logistic-regression-raw-pixels": []}
        for s, sl, q, ql in trials(y, 5, shots, args.queries, args.episodes, args.seed + shots):
            centroids = np.stack([x[s][sl == j].mean(0) for j in range(5)])
            guess = ((x[q][:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
            acc["nearest-centroid-raw-pixels"].append(float((guess == ql).mean()))
            lr = LogisticRegression(C=1.0, max_iter=1000, tol=1e-6).fit(x[s], sl)
            acc["logistic-regression-raw-pixels"].append(float((lr.predict(x[q]) == ql).mean()))
        for name, per_trial in acc.items():
            mean, ci = mean_ci(per_trial)
            rows.append({"name": name, "ways": 5, "shots": shots, "accuracy": mean, "ci95": ci,
                         "episodes": args.episodes, "queries": args.queries, "seed": args.seed + shots})
            theirs = next(r for r in kshot["baselines"] if r["name"] == name and r["shots"] == shots)
            bound = math.hypot(ci, theirs["ci95"])
            diff = mean - theirs["accuracy"]
            verdicts.append({"name": name, "shots": shots, "independent": mean, "kshot": theirs["accuracy"],
                             "difference": diff, "combined_ci95": bound, "within": abs(diff) <= bound})
            print(f"5-way {shots}-shot {name:32s} independent {100 * mean:5.1f} ± {100 * ci:.1f}   "
                  f"kshot {100 * theirs['accuracy']:5.1f} ± {100 * theirs['ci95']:.1f}   "
                  f"difference {100 * diff:+.1f} (bound {100 * bound:.1f}): {'within' if abs(diff) <= bound else 'OUTSIDE'}")
    out = {"baselines": rows, "comparison": verdicts, "compared_with": args.kshot_json,
           "command": ["python", "reports/scripts/digits_baselines_check.py", *sys.argv[1:]],
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "environment": {"python": platform.python_version(), "numpy": np.__version__, "pillow": PIL.__version__,
                           "scikit-learn": sklearn.__version__, "machine": platform.machine(),
                           "processor": platform.processor() or None}}
    with open(args.out_json, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {args.out_json}")
    return 0 if all(v["within"] for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
