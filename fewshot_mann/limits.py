"""Upper bounds of every number a user gives: flags, ``-c`` config files, a checkpoint's config,
an evaluation JSON's config. Far above any real use, far below what overflows a C integer, a
tensor dimension or memory: a value past one is a typo or an attack, refused with one line
naming the option and the range before any work (``config.option(high=...)``,
``cli.common.at_least``). ``docs/guarantees.md`` lists them."""
from __future__ import annotations

MAX_WAYS = 100_000  # classes in an episode (5,000-class folders are real; string labels: 3,125)
MAX_INSTANCES = 100_000  # images of a class in an episode
MAX_EPISODE_STEPS = 1_000_000  # ways x instances: one episode's sequence length
MAX_WIDTH = 16_384  # controller, memory width, transformer width, feature projection
MAX_SLOTS = 65_536  # memory slots
MAX_HEADS = 64  # read heads, write heads, attention heads
MAX_LAYERS = 64  # transformer layers
MAX_SHIFT = 1_024  # ntm location shifts (also at most the slots)
MAX_FEATURE_DIM = 65_536  # a backbone's feature width (the widest timm backbone: a few thousand)
MAX_FEATURE_STAGES = 4  # --feature-stages: pooled block stages read beside a backbone's head
MAX_BATCH = 65_536  # episodes (or sequences) per forward pass
MAX_EPISODES = 10**12  # training episodes and the counts measured in episodes (eval/checkpoint every, lr decay)
MAX_EVAL_EPISODES = 10_000_000  # episodes of one evaluation
MAX_ORDERS = 1_000  # predict: shuffled support orders averaged over
MAX_ADAPT_STEPS = 10_000  # predict/kshot --adapt: fine-tuning steps
MAX_FINETUNE_STEPS = 2_000  # --finetune: backbone fine-tuning steps on one support set
FINETUNE_STEPS = 40  # the bare --finetune (chosen on validation domains: fewshot/finetune.py)
MAX_SHOTS = 10_000  # kshot: labelled examples per class
MAX_ROUNDS = 10_000  # bench rounds, profile and rss steps
MAX_CLASSES = 1_000_000  # bench's synthetic classes
MAX_BATCH_VALUES = 2**31  # values of one training batch's inputs or memories (8 GiB of float32)
MAX_PARAMETERS = 2**28  # a model's parameters (1 GiB of float32); the paper's models have about 0.5 M
MAX_SECONDS = 7 * 24 * 3600.0  # bench --seconds


def shown(value) -> str:
    """A number past a bound, as a message shows it: every digit up to 10^18 (``10,001``, not ``1e+04``,
    which reads as the bound itself), then three significant ones."""
    return f"{value:,}" if abs(value) < 10**18 else f"{value:.3g}"
