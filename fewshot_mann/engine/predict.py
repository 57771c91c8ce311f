"""``fewshot-mann predict``: classify new images from a few labelled examples per class.

    fewshot-mann predict --checkpoint RUN/checkpoint.pt --support SUPPORT/ --query NEW.png [more ...]
                         [--orders 8] [--threshold P] [--json out.json] [--csv out.csv]

``--support`` holds one sub-folder per class (the class name is the folder name) with a
few labelled images each (1 to 10 is the intended range); ``--query`` takes image files
and/or folders of them. Images are converted to the checkpoint's image size and channels
with its resize policy, exactly as in training (``images.ImageReader``).

Protocol (the same task the model was meta-trained on, so it works for every model type
from the checkpoint alone):

1. The support images are presented as one label-shifted sequence: a random order and a
   random assignment of the model's labels to the classes; at step t the model sees image
   t and the label of image t-1 (zeros at t = 0).
2. Each query is appended as the last step of its *own copy* of that sequence. Its answer
   is the model's output at that step; no query is ever written into the memory that
   another query reads (all copies run as one batch of queries x orders sequences).
3. Steps 1-2 are repeated for ``--orders`` shuffled orders and label assignments (seeded by
   ``--seed``); for each, the output distribution is restricted to the labels given to the
   support classes and renormalised (string labels: the product of the per-character
   probabilities of each class's code), and the class probabilities are averaged over
   orders. This removes most of the dependence on which label and which position a class
   happened to get.

Per query: the predicted class, the probability of every class, the fraction of orders
that agree with the prediction, and ``low_confidence`` when the top probability is below
``--threshold`` (default: halfway between chance and certainty, ``(1 + 1/classes) / 2``).

Limits: a one-hot model answers with one of the ``ways`` labels it was trained with, so
more support classes than its ``ways`` is an error (retrain with a larger ``--ways``, or
use ``--labels string``, whose 5-character codes can name more classes: that works, with a
warning, but such sequences are longer than any the model was trained on). A class with more
images than the model's ``instances - 1`` contributes a random ``instances - 1`` of them in
each order (all of them over several orders), so that the query is never presented later
in a class's sequence than during training.

Privacy: the external memory lives only inside one forward pass; nothing is cached or
saved except the outputs asked for (``--json``, ``--csv``).
"""
from __future__ import annotations

import copy
import io
from pathlib import Path

import numpy as np
import torch

from fewshot_mann.data.bank import ClassBank
from fewshot_mann.config import STRING_LENGTH, STRING_SYMBOLS, Config, answers_any_ways
from fewshot_mann.errors import DataError, UserError
from fewshot_mann.text import csv_writer, printable
from fewshot_mann.data.folder import load_folder, report_problems, warn
from fewshot_mann.data.images import BadImage, ImageReader
from fewshot_mann.data.scan import walk_images
from fewshot_mann.data.episodes import told_labels

_PREDICT_STREAM = 3  # distinct from the evaluation (1) and training (2) random streams


def support_cap(cfg: Config) -> int:
    """Most images per class in one support sequence (the query is then instance ``instances``)."""
    return max(1, cfg.episodes.instances - 1)


def label_codes(cfg: Config, classes: int, rng: np.random.Generator) -> np.ndarray:
    """(classes, groups) symbols of a random label for each class (one-hot: groups = 1)."""
    e = cfg.episodes
    if e.labels == "onehot":
        return rng.permutation(e.ways)[:classes, None]
    codes = rng.choice(STRING_SYMBOLS ** STRING_LENGTH, size=classes, replace=False)
    return (codes[:, None] // STRING_SYMBOLS ** np.arange(STRING_LENGTH)) % STRING_SYMBOLS


def support_sequence(bank: ClassBank, cfg: Config, rng: np.random.Generator):
    """One shuffled, labelled support sequence.

    Returns images (S, C, H, W) uint8, step_class (S,) class index of each step, and
    codes (classes, groups) the label symbols given to each class in this order.
    """
    cap = support_cap(cfg)
    picks = []
    for c in range(bank.num_classes):
        n = int(bank.counts[c])
        chosen = rng.permutation(n)[:cap] if n > cap else np.arange(n)
        picks += [(int(bank.offsets[c]) + int(i), c) for i in np.sort(chosen)]
    order = rng.permutation(len(picks))
    index = np.array([picks[i][0] for i in order])
    step_class = np.array([picks[i][1] for i in order])
    return bank.images[index], step_class, label_codes(cfg, bank.num_classes, rng)


def _label_inputs(step_class: np.ndarray, codes: np.ndarray, group_size: int) -> torch.Tensor:
    """(S + 1, groups * group_size): the previous step's label (zeros at step 0)."""
    symbols = torch.from_numpy(codes[step_class])  # (S, G)
    onehot = torch.nn.functional.one_hot(symbols, group_size).flatten(1).float()
    return torch.cat([torch.zeros(1, onehot.shape[1]), onehot], dim=0)


def class_probabilities(last_logits: torch.Tensor, codes: torch.Tensor, group_size: int,
                        temperature: float = 1.0) -> torch.Tensor:
    """Output at the query step -> probability of each support class.

    last_logits: (B, groups * group_size); codes: (B, classes, groups) label symbols of
    each class. Returns (B, classes): softmax over the classes of the summed per-group
    log-probabilities of their labels, i.e. the label distribution restricted to the
    labels in use and renormalised; ``temperature``: the class scores divided by it first (a checkpoint's
    calibration, ``reporting.calibration``).
    """
    b, groups = last_logits.shape[0], codes.shape[-1]
    logp = torch.log_softmax(last_logits.view(b, groups, group_size).float(), dim=-1)  # (B,G,S)
    picked = torch.gather(logp.unsqueeze(1).expand(-1, codes.shape[1], -1, -1), 3, codes.unsqueeze(-1))
    return torch.softmax(picked.squeeze(-1).sum(-1) / temperature, dim=-1)


def predict_probabilities(model: torch.nn.Module, cfg: Config, support: ClassBank, queries: np.ndarray,
                          orders: int = 8, seed: int = 0, batch_size: int = 256, device="cpu",
                          temperature: float = 1.0) -> np.ndarray:
    """(orders, queries, classes) class probabilities, see the module docstring: the softmax of
    ``predict_scores`` divided by ``temperature``."""
    scores = torch.from_numpy(predict_scores(model, cfg, support, queries, orders, seed, batch_size, device))
    return torch.softmax(scores.double() / temperature, dim=-1).float().numpy()


@torch.inference_mode()
def predict_scores(model: torch.nn.Module, cfg: Config, support: ClassBank, queries: np.ndarray,
                   orders: int = 8, seed: int = 0, batch_size: int = 256, device="cpu") -> np.ndarray:
    """(orders, queries, classes) class scores (``trust.class_scores``: the logit of each class's label).

    support: the labelled classes; queries: (Q, C, H, W) uint8. The Q x orders sequences
    run in batches of ``batch_size``; each is (its order's support sequence) + (one query).
    """
    from fewshot_mann.engine.trust import class_scores

    model.eval()
    seqs = [support_sequence(support, cfg, np.random.default_rng([_PREDICT_STREAM, seed, o])) for o in range(orders)]
    sup_images = torch.from_numpy(np.stack([s[0] for s in seqs]))  # (O,S,C,H,W) uint8
    sup_labels = torch.stack([_label_inputs(s[1], s[2], cfg.episodes.group_size) for s in seqs])  # (O,S+1,L)
    codes = torch.from_numpy(np.stack([s[2] for s in seqs])).long()  # (O,classes,G)
    query_images = torch.from_numpy(queries)
    out = torch.empty(orders, len(queries), support.num_classes)
    if getattr(model, "reads_support_once", False) and cfg.episodes.labels == "onehot":
        # one write of each order's support, every query read against it in one call (the logistic write fits
        # once an order, not once a query or a batch of queries: 20 classes x 5 images is a Newton system of
        # 2,020 unknowns); a query is a feature vector, so all of them at once is small
        told = told_labels(sup_labels)[:, :-1].to(device)  # (O,S,L): the support steps' labels
        feats = sup_images.to(device=device, dtype=torch.float32)
        q = query_images.to(device=device, dtype=torch.float32)
        for o in range(orders):
            scores = model.support_query_scores(feats[o:o + 1], told[o:o + 1], q.unsqueeze(0))[0]  # (Q,L)
            out[o] = class_scores(scores, codes[o].expand(len(q), -1, -1).to(device), cfg.episodes.group_size).cpu()
        return out.numpy()
    pairs = [(o, q) for o in range(orders) for q in range(len(queries))]
    for first in range(0, len(pairs), batch_size):
        chunk = pairs[first:first + batch_size]
        o_idx = torch.tensor([o for o, _ in chunk])
        q_idx = torch.tensor([q for _, q in chunk])
        images = torch.cat([sup_images[o_idx], query_images[q_idx].unsqueeze(1)], dim=1)  # (b,S+1,C,H,W)
        pixels = images.dtype == torch.uint8
        images = images.to(device=device, dtype=torch.float32)
        if pixels:  # backbone features are used as they are
            images = images.div_(255.0)
        logits = model(images, sup_labels[o_idx].to(device))
        out[o_idx, q_idx] = class_scores(logits[:, -1], codes[o_idx].to(device), cfg.episodes.group_size).cpu()
    return out.numpy()


def expand_queries(paths: list[str]) -> list[Path]:
    """Files as given; folders as every image file under them (sorted, links out not followed)."""
    files: list[Path] = []
    for p in paths:
        path = Path(p).expanduser()
        if not path.exists():
            raise DataError(f"--query {p} does not exist")
        if path.is_dir():
            problems: list = []
            found = walk_images(path, path.resolve(), problems, set())
            for problem in problems:
                warn(f"skipped --query {path / problem.path}: {problem.message}")
            files += found
        else:
            files.append(path)
    return files


def summarise(names: list[str], probs: np.ndarray, threshold: float | None, queries: list[str],
              known: np.ndarray | None = None, unknown_threshold: float | None = None) -> list[dict]:
    """One dict per query from (orders, queries, classes) probabilities. ``known`` (Q,): each query's
    known score (``reporting.calibration.known_score`` of its class scores averaged over orders); with
    ``unknown_threshold``, a query below it is ``"unknown": true`` (``"unknown": null``: no threshold)."""
    mean = probs.mean(0)  # (Q, classes)
    votes = probs.argmax(-1)  # (O, Q)
    cut = (1.0 + 1.0 / len(names)) / 2.0 if threshold is None else threshold
    results = []
    for q, query in enumerate(queries):
        best = int(mean[q].argmax())
        results.append({
            "query": query,
            "prediction": names[best],
            "confidence": round(float(mean[q, best]), 6),
            "low_confidence": bool(mean[q, best] < cut),
            "order_agreement": round(float((votes[:, q] == best).mean()), 6),
            "probabilities": {n: round(float(p), 6) for n, p in zip(names, mean[q])},
        })
        if known is not None:
            results[-1]["known_score"] = round(float(known[q]), 6)
            results[-1]["unknown"] = None if unknown_threshold is None else bool(known[q] < unknown_threshold)
    return results


def format_results(results: list[dict], top: int = 3) -> str:
    results = [{**r, "query": printable(r["query"]), "prediction": printable(r["prediction"]),  # one line a row
                "probabilities": {printable(n): p for n, p in r["probabilities"].items()}} for r in results]
    width = max([len("query")] + [len(r["query"]) for r in results])
    pw = max([len("prediction")] + [len(r["prediction"]) for r in results])
    # the orders' agreement says nothing when it is the same for every query (an order-free model: 1.00)
    agree = len({r["order_agreement"] for r in results}) > 1
    lines = [f"{'query':<{width}}  {'prediction':<{pw}}  prob   {'agree  ' if agree else ''}other classes"]
    for r in results:
        others = sorted(((p, n) for n, p in r["probabilities"].items() if n != r["prediction"]), reverse=True)[:top - 1]
        rest = ", ".join(f"{n} {p:.2f}" for p, n in others)
        flag = ("  UNKNOWN (none of these classes?)" if r.get("unknown") else "") + \
            ("  LOW CONFIDENCE" if r["low_confidence"] else "")
        lines.append(f"{r['query']:<{width}}  {r['prediction']:<{pw}}  {r['confidence']:.2f}   "
                     + (f"{r['order_agreement']:.2f}   " if agree else "") + f"{rest}{flag}")
    return "\n".join(lines)


def to_csv(results: list[dict], names: list[str]) -> str:
    buf = io.StringIO()
    w = csv_writer(buf)  # names starting with = + - @ written as text, never as spreadsheet formulas
    w.writerow(["query", "prediction", "confidence", "low_confidence", "order_agreement", *[f"p({n})" for n in names],
                "unknown"])
    for r in results:
        unknown = "none" if r.get("unknown") is None else str(r["unknown"]).lower()  # none: no threshold in the checkpoint
        w.writerow([r["query"], r["prediction"], f"{r['confidence']:.6f}", str(r["low_confidence"]).lower(),
                    f"{r['order_agreement']:.6f}", *[f"{r['probabilities'][n]:.6f}" for n in names], unknown])
    return buf.getvalue()


def with_support_ways(cfg: Config, classes: int) -> Config:
    """``cfg`` with one label per support class, for a model that answers any number of them."""
    if not answers_any_ways(cfg) or cfg.episodes.ways == classes:
        return cfg
    cfg = copy.deepcopy(cfg)
    cfg.episodes.ways = classes
    return cfg


def load_support(path, cfg: Config, reader: ImageReader):
    """The ``--support`` folder (never cached: patient images stay where the user keeps them),
    refused when the model cannot choose between its classes, with a warning for what it can
    only partly use. ``reader``: ``inputs.image_reader(cfg)``."""
    support = load_folder(path, reader=reader, progress=False, cache=False, option="--support")
    return check_support(support, cfg, path)


def check_support(support, cfg: Config, path):
    """``load_support``'s checks of a decoded support folder (``FolderData``): problems warned, an error
    when the model cannot choose between its classes; returns ``support``. A model that answers any
    number of classes (``config.answers_any_ways``: the label-keyed memory) takes them all."""
    e = cfg.episodes
    report_problems(support, "--support")
    bank = support.bank
    if bank.num_classes < 2:
        raise DataError(f"--support {path} has {bank.num_classes} usable class folder(s); "
                        "predict needs at least 2 classes to choose between")
    if e.labels == "onehot" and bank.num_classes > e.ways and not answers_any_ways(cfg):
        raise DataError(f"--support has {bank.num_classes} classes but the checkpoint's model answers with "
                        f"{e.ways} one-hot labels (--ways {e.ways}); use at most {e.ways} classes, or a model "
                        f"trained with --ways {bank.num_classes} or --labels string")
    if e.labels == "string" and bank.num_classes > e.ways:
        warn(f"{bank.num_classes} support classes; the checkpoint was trained on {e.ways}-way episodes, "
             "so accuracy with more classes is untested")
    cap = support_cap(cfg)
    if int(bank.counts.max()) > cap:
        many = [n for n, c in zip(bank.names, bank.counts) if c > cap]
        warn(f"{len(many)} support class(es) have more than {cap} images (the model was trained with "
             f"--instances {e.instances}); each order uses a random {cap} of them")
    return support


def read_queries(paths: list[str], cfg: Config, reader: ImageReader, support) -> tuple[np.ndarray, list[str]]:
    """(Q, C, H, W) uint8 query images and their names; unreadable files are skipped with a
    warning, and a query that is one of the support images is named."""
    images, names, digests = [], [], []
    for path in expand_queries(paths):
        try:
            image, _, digest = reader.read(path)
        except BadImage as exc:
            warn(f"skipped --query {path}: {exc}")
            continue
        images.append(image)
        names.append(str(path))
        digests.append(digest)
    if not images:
        raise DataError("no readable query images (see the warnings above)")
    warn_support_copies(names, digests, support)
    return np.stack(images), names


def warn_support_copies(names: list[str], digests: list[str], support) -> None:
    """A warning naming each query that is the same file (sha256) as a support image."""
    bank = support.bank
    support_digests = dict(zip(support.digests.tolist(), np.repeat(np.arange(bank.num_classes), bank.counts).tolist()))
    for query, digest in zip(names, digests):
        if digest in support_digests:
            warn(f"--query {query} is the same file as a support image of class "
                 f"{bank.names[support_digests[digest]]!r}")


def warn_if_hard(bank: ClassBank, raw: ClassBank, backbone: bool, what: str = "the support set's") -> None:
    """A warning when ``what`` leave-one-out nearest-centroid accuracy is at chance (or, over
    backbone features, below that of the raw pixels): the answers will be unreliable."""
    from fewshot_mann.engine.kshot import loo_accuracy

    labels = np.repeat(np.arange(bank.num_classes), bank.counts)
    loo = loo_accuracy(bank.images, labels, "center-l2" if backbone else "pixels")
    loo_raw = loo_accuracy(raw.images, labels, "pixels")
    if loo is not None and (loo <= 1.0 / bank.num_classes or (backbone and loo_raw is not None and loo < loo_raw)):
        warn(f"{what} leave-one-out nearest-centroid accuracy is {100 * loo:.0f} % "
             f"(raw pixels {100 * (loo_raw or 0):.0f} %, chance {100 / bank.num_classes:.0f} %): these classes are "
             "hard to tell apart from these examples; expect unreliable answers")


def adapted(model: torch.nn.Module, cfg: Config, bank: ClassBank, steps: int, seed: int) -> torch.nn.Module:
    """A copy of ``model`` meta-fine-tuned for ``steps`` steps on label-shifted episodes of the
    support set (``adapt.adapt_to_support``; queries are never used); ``model`` is unchanged."""
    import dataclasses

    from fewshot_mann.engine.adapt import adapt_to_support

    e = cfg.episodes
    if e.labels == "onehot" and bank.num_classes != e.ways:
        raise UserError(f"--adapt: this one-hot model answers {e.ways} classes and the support set has "
                        f"{bank.num_classes}; adapt with {e.ways} support classes, or predict without --adapt")
    episode_cfg = e if e.labels == "onehot" else dataclasses.replace(e, ways=bank.num_classes)
    labels = np.repeat(np.arange(bank.num_classes), bank.counts)
    return adapt_to_support(model, bank.images, labels, episode_cfg, steps, seed=[seed])


def one_shot_finetune_note(counts, steps: int) -> str | None:
    """One line where ``steps`` of fine-tuning read a support class of a single image (``counts``: images a class):
    on the validation domains tuning at 1 shot scored level with the frozen answers (eurosat 71.5 vs 71.6 %) or
    below them (clothing 49.6 vs 52.1; reports/results-finetune/README.md). None otherwise."""
    if not steps or not len(counts) or min(counts) >= 2:
        return None
    return ("with one image a class, fine-tuning scored level with or below the frozen answers on the validation "
            "domains (docs/your-own-dataset.md, \"Fine-tuning the backbone\")")


def finetuned_inputs(cfg: Config, support: ClassBank, queries: np.ndarray, steps: int, seed: int):
    """(support bank, query features) of a backbone fine-tuned ``steps`` steps on the support images alone
    (``fewshot.finetune``): ``support`` and ``queries`` hold the decoded images."""
    bank, features = finetuned_support(cfg, support, steps, seed)
    return bank, features(queries)


def finetuned_support(cfg: Config, support: ClassBank, steps: int, seed: int, progress=None):
    """(support bank of tuned features, ``features``: decoded query images -> their tuned features): the
    backbone's last layers fine-tuned ``steps`` steps on the support images alone (``Finetuner.tune_support``;
    ``progress(step, steps)`` after each step), so queries given later never change what was learned."""
    from fewshot_mann.fewshot.finetune import Finetuner, settings_for

    _backbone_weights(cfg)
    tuner = Finetuner(cfg.model, settings_for(steps), support.images, seed=seed)
    labels = np.repeat(np.arange(support.num_classes), support.counts)
    s_feats, features = tuner.tune_support(np.arange(len(support.images)), labels, support.num_classes,
                                           seed=[seed], progress=progress)
    return ClassBank(s_feats, support.offsets.copy(), support.counts.copy(), list(support.names)), features


def predict(model: torch.nn.Module, cfg: Config, support_path, query_paths: list[str], orders: int = 8,
            threshold: float | None = None, seed: int = 0, batch_size: int = 256, device="cpu", adapt: int = 0,
            finetune: int = 0, calibration=None):
    """Classify the query images from the support folder: (results, support bank); see the
    module docstring for the protocol and ``summarise`` for a result. ``adapt`` > 0: answered
    by a copy of the model meta-fine-tuned that many steps on the support set (``adapted``).
    ``finetune`` > 0: the backbone's last layers fine-tuned that many steps to the support images first
    (``finetuned_inputs``). ``calibration`` (``reporting.calibration.Calibration``; None: temperature 1,
    no unknown threshold): the fit nearest the support's shots (``predict_trust.support_shots``) sets the
    temperature and the unknown threshold."""
    from fewshot_mann.models.inputs import image_reader

    reader = image_reader(cfg)
    _backbone_weights(cfg)  # missing or different weights fail before any image is read
    support = load_support(support_path, cfg, reader)
    cfg = with_support_ways(cfg, support.bank.num_classes)
    images, names = read_queries(query_paths, cfg, reader, support)
    bank, queries = (finetuned_inputs(cfg, support.bank, images, finetune, seed) if finetune
                     else (support_inputs(cfg, support)[0], query_inputs(cfg, images)))
    if adapt:
        model = adapted(model, cfg, bank, adapt, seed)
    from fewshot_mann.engine.predict_trust import calibrated
    probs, known, unknown_threshold = calibrated(predict_scores(model, cfg, bank, queries, orders=orders, seed=seed,
                                                                batch_size=batch_size, device=device),
                                                 calibration, bank, support_cap(cfg))
    return summarise(bank.names, probs, threshold, names, known, unknown_threshold), bank


def _backbone_weights(cfg: Config) -> str | None:
    """The sha256 of a backbone checkpoint's weights (``features.resolve_weights``); None for pixels."""
    from fewshot_mann.config import is_backbone

    if not is_backbone(cfg.model.encoder):
        return None
    from fewshot_mann.models.features import resolve_weights
    return resolve_weights(cfg.model, trained=True)


def support_inputs(cfg: Config, support) -> tuple[ClassBank, ClassBank]:
    """(the support bank as the model reads it, its raw pixels shrunk for the baselines), with
    ``warn_if_hard``'s warning. A backbone's features are never cached: they are the user's images."""
    from fewshot_mann.engine.loading import shrink

    digest = _backbone_weights(cfg)
    bank, raw = support.bank, shrink(support.bank)
    if digest is not None:
        from fewshot_mann.models.features import embed_bank
        bank = embed_bank(bank, cfg.model, digest=digest, cache=False, progress=False)
    warn_if_hard(bank, raw, digest is not None)
    return bank, raw


def query_inputs(cfg: Config, queries: np.ndarray) -> np.ndarray:
    """(Q, C, H, W) uint8 query images as the model reads them: backbone features (never cached), or the pixels."""
    digest = _backbone_weights(cfg)
    if digest is None:
        return queries
    from fewshot_mann.models.features import embed_images
    return embed_images(queries, cfg.model, digest=digest, cache=False, progress=False)
