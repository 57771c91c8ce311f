"""A run's loop state and optimiser, fresh (``initial_state``, ``new_optimizer``) or resumed: which
settings the new command line may change, and the checks a checkpoint's weights, optimiser and
loop state pass before a run continues from them.

A resumed run continues bit-for-bit where the checkpoint left off: the batch of step s is a pure
function of (seed, s), and everything else that carries over (weights, optimiser, running sums,
the log's length) lives in the checkpoint. It keeps its own config but for ``RESUME_OVERRIDES``.
"""
from __future__ import annotations

import math

import torch

from fewshot_mann.config import Config
from fewshot_mann.errors import CheckpointError

# settings a resumed run takes from the new command line (every other one is the run's own): the
# machine always; the budget where it is given (``asked``; a resume without --episodes finishes the run's
# own); a setting listed with a condition only where the new command line sets that condition's setting
# (a schedule may be set or moved when a run is extended; a data root given anew is where the same data
# lives now)
ASKED = "asked"
RESUME_OVERRIDES = {
    ("train", "episodes"): ASKED, ("train", "device"): None, ("train", "threads"): None,
    ("train", "skip_nonfinite"): None,
    ("train", "lr_decay_at"): ("train", "lr_decay_at"), ("train", "lr_decay_factor"): ("train", "lr_decay_at"),
    ("data", "data_root"): ("data", "data_root"),
}


def initial_state(cfg: Config) -> dict:
    """The loop's counters and running sums at step 0 (saved in every checkpoint as "state")."""
    return {"step": 0, "episodes_done": 0, "train_seconds": 0.0, "metrics_bytes": 0,
            "acc_loss": 0.0, "acc_steps": 0, "acc_correct": [0.0] * cfg.episodes.instances,
            "acc_count": [0.0] * cfg.episodes.instances, "nonfinite_skipped": 0, "last_eval": None}


FUSED_ADAM_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def new_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Adam:
    """Adam; fused (all parameters in one kernel: the same update, about 1 ms less per
    step at batch 16 on one CPU core) where torch has it for these parameters."""
    params = list(model.parameters())
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in FUSED_ADAM_DTYPES for p in params)
    return torch.optim.Adam(params, lr=lr, fused=True if fused else None)


def ignored_on_resume(new: Config, saved: Config, asked: dict) -> list[str]:
    """``"--flag new (the run has old)"`` for each explicitly given setting a resume ignores."""
    ignored = []
    for (section, name), flag in sorted(asked.items(), key=lambda kv: kv[1]):
        if (section, name) in RESUME_OVERRIDES:
            continue
        value, own = getattr(getattr(new, section), name), getattr(getattr(saved, section), name)
        if value != own:
            ignored.append(f"{flag} {value} (the run has {own})")
    return ignored


def resumed_config(new: Config, saved: Config, asked: dict | None = None) -> Config:
    """The config a resumed run continues with: its own (``saved``), except for ``RESUME_OVERRIDES``,
    which come from the new command line (``new``). ``asked``: {(section, field): flag} given explicitly
    (the command line); None (a caller's own ``Config``) counts every field as given."""
    for key, condition in RESUME_OVERRIDES.items():
        section, name = key
        if condition == ASKED:
            take = asked is None or key in asked
        else:
            take = condition is None or getattr(getattr(new, condition[0]), condition[1])
        if take:
            setattr(getattr(saved, section), name, getattr(getattr(new, section), name))
    return saved


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_optimizer(optimizer: torch.optim.Optimizer, fresh_groups: list[dict]) -> None:
    """ValueError unless the loaded Adam state is one Adam can step with (a damaged file
    would otherwise fail only at the first step, with a KeyError or a shape error)."""
    for group, fresh in zip(optimizer.param_groups, fresh_groups):
        for key, default in fresh.items():
            if key == "params":
                continue
            if key not in group:
                raise ValueError(f"optimiser setting {key!r} is missing")
            value = group[key]
            if isinstance(default, bool) and not isinstance(value, bool):
                raise ValueError(f"optimiser setting {key} = {value!r:.40} is not a flag")
            if isinstance(default, (int, float)) and not isinstance(default, bool) and not _is_number(value):
                raise ValueError(f"optimiser setting {key} = {value!r:.40} is not a number")
            if isinstance(default, tuple) and (not isinstance(value, (tuple, list)) or len(value) != len(default)
                                               or not all(_is_number(v) for v in value)):
                raise ValueError(f"optimiser setting {key} = {value!r:.40} is not {len(default)} numbers")
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            if not state:
                continue
            for name in ("step", "exp_avg", "exp_avg_sq"):
                if not isinstance(state.get(name), torch.Tensor):
                    raise ValueError(f"optimiser state lacks {name!r}")
            for name in ("exp_avg", "exp_avg_sq"):
                if state[name].shape != p.shape:
                    raise ValueError(f"optimiser {name} has shape {tuple(state[name].shape)}, weight {tuple(p.shape)}")


def valid_last_eval(value) -> bool:
    """None, or ``{"episodes": count, "accuracy_by_instance": [numbers]}`` as ``run_eval`` saves it."""
    if value is None:
        return True
    if not isinstance(value, dict):
        return False
    episodes, acc = value.get("episodes"), value.get("accuracy_by_instance")
    return (isinstance(episodes, int) and not isinstance(episodes, bool) and episodes >= 0
            and isinstance(acc, list) and 0 < len(acc) <= 10_000 and all(_is_number(a) for a in acc))


def restore(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict, ckpt: dict, path) -> None:
    """Load a checkpoint's weights, optimiser and loop state; CheckpointError if any part
    does not fit this run (a hand-edited, exported or foreign file)."""
    if ckpt.get("optimizer") is None or not isinstance(ckpt.get("state"), dict):
        raise CheckpointError(f"cannot resume from {path}: it holds no optimiser/loop state (an exported "
                              "weights-only checkpoint?); start a new run from it with --init-from")
    saved = ckpt["state"]
    missing = sorted(set(state) - set(saved))
    if missing:
        raise CheckpointError(f"cannot resume from {path}: its loop state lacks {', '.join(missing)}")
    for key in ("acc_correct", "acc_count"):
        if not isinstance(saved[key], list) or len(saved[key]) != len(state[key]):
            raise CheckpointError(f"cannot resume from {path}: its loop state {key} does not match --instances")
    for key, default in state.items():
        value = saved[key]
        if key == "last_eval":
            ok = valid_last_eval(value)
        elif isinstance(default, list):
            ok = all(_is_number(x) for x in value)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        else:
            ok = _is_number(value)
        if not ok:
            raise CheckpointError(f"cannot resume from {path}: its loop state {key} = {value!r:.60} is not a valid value")
    try:
        model.load_state_dict(ckpt["model"])
        fresh_groups = optimizer.state_dict()["param_groups"]
        optimizer.load_state_dict(ckpt["optimizer"])
        for group, fresh in zip(optimizer.param_groups, fresh_groups):  # how to step, not state: this run's
            group.update({k: fresh[k] for k in ("fused", "foreach") if k in fresh})
        _check_optimizer(optimizer, fresh_groups)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
        raise CheckpointError(f"cannot resume from {path}: its weights or optimiser state do not fit this "
                              f"model ({str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__})") from exc
    state.update({k: saved[k] for k in state})
