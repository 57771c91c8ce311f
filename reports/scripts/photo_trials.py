"""What the photo selection scripts share: the bundled ``photos`` model's config pointed at a folder, unit
length, and kshot's trials (5-way, K shots, 15 queries a class) as support / query rows of a bank."""
from __future__ import annotations

import dataclasses

import numpy as np

from fewshot_mann.data.episodes import evaluation_episodes
from fewshot_mann.engine.checkpoint import load_checkpoint


def selection_arguments(p):
    """The arguments every photo selection script takes: validation folders, shots, trials and their seed (the
    selection seed 1, not the reporting seed 0), and where to write the JSON. Returns ``p``."""
    p.add_argument("--data-root", nargs="+", required=True)
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--episodes", type=int, default=300)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json")
    return p


def photos_config(root: str):
    """The ``photos`` checkpoint's config reading every class of the folder ``root``."""
    cfg = load_checkpoint("photos")["config_obj"]
    cfg.data.dataset, cfg.data.data_root, cfg.data.test_root, cfg.data.test_classes = "folder", root, None, "all"
    return cfg


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(1e-12)


def trial_rows(bank, cfg, shots: int, episodes: int, seed: int, ways: int = 5, queries: int = 15):
    """(support rows (E,S), support labels (E,S), query rows (E,Q), query labels (E,Q)) of kshot's trials."""
    dr = evaluation_episodes(bank, dataclasses.replace(cfg.episodes, ways=ways, instances=shots + queries), seed, 0,
                             episodes)
    sup = dr.instance < shots
    return (dr.image_index[sup].reshape(episodes, -1), dr.labels[sup].reshape(episodes, -1),
            dr.image_index[~sup].reshape(episodes, -1), dr.labels[~sup].reshape(episodes, -1))
