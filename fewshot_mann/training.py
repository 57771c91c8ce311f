"""The training loop: episodes -> model -> loss -> Adam, with evaluation, logs and checkpoints.

Run directory contents: ``config.json``, ``checkpoint.pt`` (latest; atomic), and
``metrics.jsonl`` (one JSON object per line: ``{"kind": "train", ...}`` every 1,000
episodes and ``{"kind": "eval", "accuracy_by_instance": [...], "ci95": [...], ...}`` at
every evaluation). A resumed run continues bit-for-bit where the checkpoint left off:
the batch of step s is a pure function of (seed, s), and everything else that carries
over (weights, optimiser, running sums, the log's length) lives in the checkpoint.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config
from .datasets import load_banks
from .episodes import Jitter, batch_rng, check_bank, sample_episodes, to_tensors
from .errors import UserError
from .evaluation import correct_steps, evaluate, loss_fn, per_episode_instance_accuracy
from .fileio import append_line, atomic_write_json
from .models import build_model, count_parameters

LOG_EVERY_EPISODES = 1000


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA device is available (use --device cpu or auto)")
    return torch.device(name)


def new_model(cfg: Config) -> torch.nn.Module:
    """The model of ``cfg``, initialised from its seed without touching global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        return build_model(cfg)


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> bool:
    """Returns True if there is a checkpoint to resume from."""
    ckpt = out / "checkpoint.pt"
    has_run = ckpt.exists() or (out / "config.json").exists()
    if has_run and not (resume or overwrite):
        raise UserError(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")
    if overwrite and not resume:
        for name in ("checkpoint.pt", "config.json", "metrics.jsonl"):
            (out / name).unlink(missing_ok=True)
        return False
    return resume and ckpt.exists()


def load_matching_weights(model: torch.nn.Module, path: str, log, cfg: Config) -> None:
    """Start from another checkpoint's weights: copied where names and shapes match, input
    weights adapted to a new image size/channels, the rest re-initialised (``transfer.py``)."""
    from .transfer import transfer_weights

    src = load_checkpoint(path)
    for line in transfer_weights(model, cfg, src["model"], src["config_obj"], source=str(path)):
        log(line)


class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint and returns."""

    def __init__(self):
        self.signal = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.signal = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train(cfg: Config, out_dir: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
          command: list[str] | None = None, progress: bool = True, log=None,
          init_from: str | None = None) -> dict:
    """Train ``cfg`` into ``out_dir``. Returns a summary dict (episodes, seconds, last eval, ...)."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, metrics_path = out / "checkpoint.pt", out / "metrics.jsonl"
    ckpt = None
    if prepare_run_dir(out, resume, overwrite):
        ckpt = load_checkpoint(ckpt_path)
        saved = ckpt["config_obj"]
        # A resumed run keeps its own config; only the budget and machine-specific
        # settings come from the new command line.
        saved.train.episodes = cfg.train.episodes
        saved.train.device, saved.train.threads = cfg.train.device, cfg.train.threads
        saved.train.skip_nonfinite = cfg.train.skip_nonfinite
        saved.data.data_root = cfg.data.data_root or saved.data.data_root
        cfg = saved
    cfg.validate()
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    device = resolve_device(t.device)

    train_bank, test_bank = load_banks(cfg, progress=progress)
    if cfg.data.dataset == "folder":  # class names and counts only: rebuilt from the config by evaluate
        from .folder import write_split
        write_split(out / "split.json", cfg, train_bank, test_bank)
    if cfg.data.rotations:
        train_bank = train_bank.with_rotations()
    check_bank(train_bank, cfg.episodes, "training classes")
    check_bank(test_bank, cfg.episodes, "held-out classes")

    model = new_model(cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr)
    state = {"step": 0, "episodes_done": 0, "train_seconds": 0.0, "metrics_bytes": 0,
             "acc_loss": 0.0, "acc_steps": 0, "acc_correct": [0.0] * cfg.episodes.instances,
             "acc_count": [0.0] * cfg.episodes.instances, "nonfinite_skipped": 0, "last_eval": None}
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state.update(ckpt["state"])
        if metrics_path.exists() and metrics_path.stat().st_size > state["metrics_bytes"]:
            with open(metrics_path, "r+b") as f:  # drop lines written after the checkpoint
                f.truncate(state["metrics_bytes"])
        log(f"resuming {out} at {state['episodes_done']:,} episodes")
    elif init_from:
        load_matching_weights(model, init_from, log, cfg)
    config_dict = cfg.to_dict()
    atomic_write_json(out / "config.json", {"config": config_dict, "command": command})

    batch = t.batch_size
    total_steps = math.ceil(t.episodes / batch)
    steps_per_log = max(1, math.ceil(LOG_EVERY_EPISODES / batch))
    steps_per_eval = max(1, math.ceil(t.eval_every / batch)) if t.eval_every else 0
    steps_per_ckpt = max(1, math.ceil(t.checkpoint_every / batch))
    jitter = Jitter(cfg.data.jitter_shift, cfg.data.jitter_rotate)
    use_jitter = cfg.data.jitter_shift > 0 or cfg.data.jitter_rotate > 0

    def save():
        state["metrics_bytes"] = metrics_path.stat().st_size if metrics_path.exists() else 0
        save_checkpoint(ckpt_path, {
            "config": config_dict, "command": command, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "state": dict(state),
            "step": state["step"], "episodes_done": state["episodes_done"],
        })

    def run_eval():
        res = evaluate(model, test_bank, cfg.episodes, episodes=t.eval_episodes, seed=t.seed, device=device)
        res.pop("_per_episode")
        entry = {"kind": "eval", **res, "episodes": state["episodes_done"], "eval_episodes": res["episodes"],
                 "train_seconds": round(state["train_seconds"], 3)}
        append_line(metrics_path, json.dumps(entry))
        state["last_eval"] = {"episodes": state["episodes_done"], "accuracy_by_instance": res["accuracy_by_instance"]}
        return res

    if ckpt is None:
        log(f"training {cfg.model.model} ({count_parameters(model):,} parameters) on {device}: "
            f"{cfg.episodes.ways}-way, {cfg.episodes.instances} instances, {cfg.episodes.labels} labels, "
            f"{train_bank.num_classes:,} training / {test_bank.num_classes:,} held-out classes")
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total_steps * batch, initial=state["episodes_done"], unit="ep", desc="training",
                   dynamic_ncols=True, smoothing=0.05)
    interrupted = None
    model.train()
    with _StopFlag() as stop:
        while state["step"] < total_steps:
            step = state["step"]
            t0 = time.perf_counter()
            rng = batch_rng(t.seed, step)
            episodes = sample_episodes(train_bank, cfg.episodes, rng, batch)
            gen = torch.Generator().manual_seed(int(rng.integers(2**62))) if use_jitter else None
            tb = to_tensors(episodes, cfg.episodes, device, augment=jitter if use_jitter else None, generator=gen)
            logits = model(tb.images, tb.label_inputs)
            loss = loss_fn(logits, tb.targets, cfg.episodes)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip if t.grad_clip > 0 else float("inf"))
            loss_value = float(loss.detach())
            if not (math.isfinite(loss_value) and math.isfinite(float(norm))):
                if not t.skip_nonfinite:
                    if bar is not None:
                        bar.close()
                    raise UserError(
                        f"non-finite loss or gradient at step {step} ({state['episodes_done']:,} episodes); "
                        f"stopped without updating; the last good checkpoint is kept at {ckpt_path} "
                        "(resume with --resume, or pass --skip-nonfinite to skip such batches)")
                optimizer.zero_grad(set_to_none=True)
                state["nonfinite_skipped"] += 1
                log(f"warning: skipped a batch with a non-finite loss/gradient at step {step}")
            else:
                optimizer.step()
                with torch.no_grad():
                    correct = correct_steps(logits.detach(), tb.targets, cfg.episodes)
                    acc = per_episode_instance_accuracy(correct, tb.instance, cfg.episodes.instances).sum(0)
                state["acc_loss"] += loss_value
                state["acc_steps"] += 1
                state["acc_correct"] = [a + float(b) for a, b in zip(state["acc_correct"], acc)]
                state["acc_count"] = [a + batch for a in state["acc_count"]]
            state["step"] = step + 1
            state["episodes_done"] = (step + 1) * batch
            state["train_seconds"] += time.perf_counter() - t0
            done = state["step"]
            if bar is not None:
                bar.update(batch)
            if done % steps_per_log == 0 or done == total_steps:
                n = max(1, state["acc_steps"])
                acc_inst = [c / max(1.0, k) for c, k in zip(state["acc_correct"], state["acc_count"])]
                append_line(metrics_path, json.dumps({
                    "kind": "train", "episodes": state["episodes_done"], "loss": state["acc_loss"] / n,
                    "accuracy_by_instance": acc_inst, "train_seconds": round(state["train_seconds"], 3)}))
                if bar is not None:
                    bar.set_postfix(loss=f"{state['acc_loss'] / n:.3f}",
                                    acc2=f"{acc_inst[1] if len(acc_inst) > 1 else acc_inst[0]:.3f}")
                state["acc_loss"], state["acc_steps"] = 0.0, 0
                state["acc_correct"] = [0.0] * cfg.episodes.instances
                state["acc_count"] = [0.0] * cfg.episodes.instances
            if steps_per_eval and (done % steps_per_eval == 0 or done == total_steps):
                res = run_eval()
                msg = " ".join(f"{100 * a:.1f}" for a in res["accuracy_by_instance"])
                (bar.write if bar is not None else log)(
                    f"[{state['episodes_done']:,} episodes] held-out accuracy by instance (%): {msg}")
            if done % steps_per_ckpt == 0 or done == total_steps:
                save()
            if stop.signal is not None:
                interrupted = stop.signal
                save()
                break
    if bar is not None:
        bar.close()
    if state["step"] == 0 and total_steps == 0:
        save()
    summary = {"out": str(out), "episodes_done": state["episodes_done"], "steps": state["step"],
               "train_seconds": state["train_seconds"], "last_eval": state["last_eval"],
               "interrupted": interrupted}
    if interrupted is not None:
        log(f"interrupted: checkpoint saved at {state['episodes_done']:,} episodes in {ckpt_path}; "
            "continue with --resume")
    return summary
