"""``evaluate --finetune``: accuracy by instance with the backbone fine-tuned, step by step, on what the
episode has told so far.

In a label-shifted episode the label of step s arrives at step s + 1, so the support set grows by one
image a step. Re-tuning before every step would cost ``ways * instances`` tunings an episode; instead the
backbone is re-tuned every ``ways`` steps (about once a round of presentations): the steps
``[t, t + ways)`` are answered by a backbone tuned on steps ``0 .. t-1`` and their labels alone, and read by
the model over the features that backbone gives every step up to them (the memory's contents included).
The first ``ways`` steps read the frozen features (nothing labelled to tune on yet, bar step 0's label at
step 1). No step ever reads a backbone tuned on itself or on a later step. Cost: ``instances - 1`` tunings
an episode, a few seconds each on 2 cores: use tens of episodes, not thousands.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from fewshot_mann.config import EpisodeConfig
from fewshot_mann.data.bank import ClassBank
from fewshot_mann.data.episodes import evaluation_episodes, to_tensors
from fewshot_mann.engine.evaluation import correct_steps, correct_steps_seen, per_episode_instance_accuracy, summarise
from fewshot_mann.engine.trust import QueryScores, class_scores


def tuned_episode_logits(model, bank: ClassBank, finetuner, cfg: EpisodeConfig, seed: int, index: int, device):
    """(drawn episode, (1, T, G*S) logits) of evaluate's episode ``index``, each block of ``ways`` steps
    answered over the features of a backbone tuned on the steps before the block."""
    drawn = evaluation_episodes(bank, cfg, seed, index, 1)
    rows, labels = drawn.image_index[0], drawn.labels[0]
    steps = len(rows)
    parts = []
    seen = drawn.images.copy()  # each block rewrites every step it reads: rows [:stop] grow with the blocks
    for start in range(0, steps, cfg.ways):
        stop = min(steps, start + cfg.ways)
        if start:
            _, tuned = finetuner.tune(rows[:start], labels[:start], rows[:stop], cfg.ways, seed=[seed, index, start])
            seen[0, :stop] = tuned
        upto = dataclasses.replace(drawn, images=seen[:, :stop], labels=drawn.labels[:, :stop],
                                   instance=drawn.instance[:, :stop], image_index=drawn.image_index[:, :stop])
        tb = to_tensors(upto, cfg, device)
        with torch.inference_mode():
            parts.append(model(tb.images, tb.label_inputs)[:, start:stop])
    return drawn, torch.cat(parts, 1)


def finetuned_evaluate(model, bank: ClassBank, finetuner, cfg: EpisodeConfig, episodes: int, seed: int = 0,
                       device="cpu", decode: str = "free", progress: bool = False) -> tuple[dict, QueryScores]:
    """``evaluation.evaluate``'s result on the same episodes, with ``finetuner`` re-tuning the backbone every
    ``ways`` steps; and the class scores of every step from a class's 2nd presentation on (for
    ``trust.trust_blocks``)."""
    score = correct_steps if decode == "free" else correct_steps_seen
    was_training = model.training
    model.eval()
    acc, scored = [], []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=episodes, desc=f"evaluating, fine-tuned {finetuner.settings.steps} steps", unit="ep",
                   leave=False)
    try:
        for e in range(episodes):
            drawn, logits = tuned_episode_logits(model, bank, finetuner, cfg, seed, e, device)
            tb = to_tensors(drawn, cfg, device)
            correct = score(logits, tb.targets, cfg)
            acc.append(per_episode_instance_accuracy(correct, tb.instance, cfg.instances).cpu().numpy())
            cols = np.flatnonzero(drawn.instance[0] >= 1)
            s = class_scores(logits[0, torch.from_numpy(cols)], np.repeat(drawn.label_digits, len(cols), 0),
                             cfg.group_size)
            scored.append(QueryScores(s.cpu().numpy().astype(np.float64), drawn.labels[0, cols].astype(np.int64),
                                      np.repeat(drawn.classes, len(cols), 0).astype(np.int64)))
            if bar is not None:
                bar.update(1)
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    per = np.concatenate(acc, axis=0)
    mean, ci = summarise(per)
    return ({"accuracy_by_instance": mean, "ci95": ci, "accuracy": float(per.mean()), "episodes": int(episodes),
             "ways": cfg.ways, "instances": cfg.instances, "labels": cfg.labels, "seed": int(seed), "decode": decode,
             "finetune": dataclasses.asdict(finetuner.settings), "_per_episode": per},
            QueryScores.concat(scored))
