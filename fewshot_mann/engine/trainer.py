"""The training loop: episodes -> model -> loss -> Adam, with evaluation, logs and checkpoints.

The run folder (``run_dir.py``) holds ``config.json``, ``checkpoint.pt`` (latest; atomic), and
``metrics.jsonl`` (one JSON object per line: ``{"kind": "train", ...}`` every 1,000
episodes and ``{"kind": "eval", "accuracy_by_instance": [...], "ci95": [...], ...}`` at
every evaluation). A resumed run continues bit-for-bit where the checkpoint left off
(``resume.py``); ``--init-from`` starts from another run's weights (``transfer.py``).
``Trainer.step`` is the one training step: ``bench`` times this very step (``Trainer.on_bank``).
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch

from fewshot_mann.config import Config
from fewshot_mann.data import image_record
from fewshot_mann.data.bank import ClassBank, FeatureBank
from fewshot_mann.data.episodes import Compose, Jitter, Photometric, batch_rng, check_bank, sample_episodes, to_tensors
from fewshot_mann.engine import distributed
from fewshot_mann.engine.checkpoint import check_weights_fit, load_checkpoint, refuse_nonfinite, save_checkpoint
from fewshot_mann.engine.evaluation import correct_steps, loss_fn, per_episode_instance_accuracy
from fewshot_mann.engine.loading import load_split_banks
from fewshot_mann.engine.resume import ignored_on_resume, initial_state, new_optimizer, restore, resumed_config
from fewshot_mann.engine.run_dir import prepare_run_dir
from fewshot_mann.engine.transfer import load_init_source, load_matching_weights
from fewshot_mann.errors import UserError
from fewshot_mann.fileio import RunLock, append_line, atomic_write_json
from fewshot_mann.models.backbones import load_trainable_encoder
from fewshot_mann.models.registry import build_model, count_parameters

LOG_EVERY_EPISODES = 1000


def learning_rate(t, episodes_seen: int) -> float:
    """The learning rate for a step taken after ``episodes_seen`` episodes."""
    if t.lr_decay_at and episodes_seen >= t.lr_decay_at:
        return t.lr * t.lr_decay_factor
    return t.lr


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
          init_from: str | None = None, asked: dict | None = None, feature_cache: bool = True) -> dict:
    """Train ``cfg`` into ``out_dir``. Returns a summary dict (episodes, seconds, last eval, ...).

    ``asked``: {(section, field): flag} of the settings the user gave explicitly; a resumed run
    names each of them that it ignores (the run keeps its own config).
    Under torchrun (``WORLD_SIZE`` set) every process runs this; see ``distributed``.
    """
    ctx, device = distributed.init_from_env(resolve_device(cfg.train.device))
    lock = RunLock()
    try:
        trainer = Trainer(cfg, Path(out_dir), ctx, device, command=command, progress=progress, log=log)
        trainer.open_run_dir(resume=resume, overwrite=overwrite, init_from=init_from, asked=asked, lock=lock)
        trainer.load_data(feature_cache=feature_cache)
        trainer.build(init_from=init_from)
        return trainer.run()
    finally:
        lock.release()
        distributed.close(ctx)


class Trainer:
    """One run of ``train``, in the order it happens: ``open_run_dir`` (the folder, and the
    checkpoint a resume continues from), ``load_data``, ``build`` (weights, optimiser, loop
    state, config.json), then ``run``: ``step`` after step, with ``log_training``,
    ``validate`` and ``save`` on their schedules, until the budget is spent or a signal
    (SIGINT/SIGTERM) asks it to stop.

    Under torchrun every rank runs one; rank 0 (``main``) alone writes files and logs.
    """

    def __init__(self, cfg: Config, out: Path, ctx: distributed.Context, device: torch.device, *,
                 command: list[str] | None, progress: bool, log):
        self.cfg, self.out, self.ctx, self.device, self.command = cfg, out, ctx, device, command
        self.main = ctx.is_main
        if not self.main:
            log, progress = (lambda msg: None), False
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.progress = progress
        self.ckpt_path, self.metrics_path = out / "checkpoint.pt", out / "metrics.jsonl"
        self.ckpt = None  # the checkpoint a resumed run continues from
        self.origin = None  # where the starting weights came from (--init-from), kept across resumes
        self.bar = None
        self.mark = lambda phase: None  # called as each phase of a step ends (bench times them)

    @classmethod
    def on_bank(cls, cfg: Config, bank: ClassBank) -> "Trainer":
        """A trainer of ``cfg`` over ``bank`` on the CPU, with no run folder, logs or checks: ``step``
        is the training step of a run (``bench`` times it)."""
        trainer = cls(cfg, Path(), distributed.Context(), torch.device("cpu"), command=None, progress=False,
                      log=lambda msg: None)
        trainer.train_bank, trainer.checks_on = bank, False
        trainer.build_loop()
        return trainer

    # ------------------------------------------------------------------ setting up

    def open_run_dir(self, *, resume: bool, overwrite: bool, init_from: str | None, asked: dict | None,
                     lock: RunLock) -> None:
        """Make the run folder ready; on a resume, read its checkpoint and take its config."""
        ctx, out = self.ctx, self.out
        # read everything the run starts from before the run folder is touched (--overwrite deletes)
        self.init_source = load_init_source(init_from) if init_from and not (resume and self.ckpt_path.exists()) \
            else None
        if distributed.on_main(ctx, lambda: prepare_run_dir(out, resume, overwrite, lock if self.main else None,
                                                            init_from)):
            ckpt = load_checkpoint(self.ckpt_path)
            check_weights_fit(ckpt["config_obj"], ckpt["model"], f"cannot resume from {self.ckpt_path}")
            refuse_nonfinite(ckpt, self.ckpt_path)  # it would stop at once, calling a NaN checkpoint "good"
            ignored = ignored_on_resume(self.cfg, ckpt["config_obj"], asked or {})
            if ignored:
                self.log(f"warning: --resume continues {out} with its own settings; ignored: {', '.join(ignored)}")
            self.ckpt, self.cfg = ckpt, resumed_config(self.cfg, ckpt["config_obj"], asked)
        self.cfg.validate()
        t = self.cfg.train
        if t.threads:
            torch.set_num_threads(t.threads)
        if t.batch_size < ctx.world:
            raise UserError(f"--batch-size {t.batch_size} is smaller than the number of processes ({ctx.world}); "
                            "every process needs at least one episode per step")

    def load_data(self, *, feature_cache: bool = True) -> None:
        """The training, validation and test banks; refuses banks no episode can be drawn from."""
        cfg = self.cfg
        parts = load_split_banks(cfg, progress=self.progress, **({} if feature_cache else {"feature_cache": False}))
        train_bank, val_bank = parts.train, parts.validation
        if isinstance(train_bank, FeatureBank) and not self.ckpt:  # backbone features: the checkpoint names them
            from fewshot_mann.models.features import weights_id
            cfg.model.weights_hash = weights_id(cfg.model) or ""
            cfg.model.feature_dim = int(parts.test.images.shape[1])
            cfg.data.rotations = False  # rotating a feature vector means nothing
        if self.main and cfg.data.dataset == "folder":  # class names and counts only (the checkpoint records them too)
            from fewshot_mann.data.class_split import write_split
            write_split(self.out / "split.json", cfg, parts.train, parts.test, parts.validation)
        self.classes_record = parts.class_names()  # which classes this model trains on, is checked on and is tested on
        # which images it trains on: a record of fixed size whatever their number (data/image_record.py)
        self.train_images = image_record.compact(x for n in parts.train.names for x in parts.digests.get(n, [])) \
            if parts.digests else None
        if cfg.data.rotations:
            train_bank = train_bank.with_rotations()
        check_bank(train_bank, cfg.episodes, "training classes")
        check_bank(parts.test, cfg.episodes, "held-out classes")  # a model that evaluate could never score is refused
        self.checks_on = bool(cfg.train.eval_every)
        if self.checks_on and (val_bank.num_classes < cfg.episodes.ways or val_bank.min_count < cfg.episodes.instances):
            self.log(f"warning: {val_bank.num_classes} validation class(es) cannot make a {cfg.episodes.ways}-way "
                     f"episode with {cfg.episodes.instances} instances; in-training checks are off (give more "
                     "--validation-classes)")
            self.checks_on = False
        self.train_bank, self.val_bank, self.test_classes = train_bank, val_bank, parts.test.num_classes

    def build(self, *, init_from: str | None) -> None:
        """Model, optimiser and loop state (restored on a resume), config.json, and the schedule."""
        self.build_loop()
        if self.ckpt is not None:
            self.restore()
            return self.write_config()
        line = load_trainable_encoder(self.model, self.cfg)
        if line:
            self.log(line)
        if init_from:
            self.origin = load_matching_weights(self.model, init_from, self.log, self.cfg, src=self.init_source)
        self.write_config()

    def write_config(self) -> None:
        self.config_dict = self.cfg.to_dict()
        if self.main:
            atomic_write_json(self.out / "config.json", {"config": self.config_dict, "command": self.command})

    def build_loop(self) -> None:
        """A new model, its optimiser and loop state, the schedule and the augmentation of the episodes."""
        cfg, t = self.cfg, self.cfg.train
        self.model = new_model(cfg).to(self.device)
        self.forward = self.model  # what a step runs the episodes through (bench: also the literal reference)
        self.optimizer = new_optimizer(self.model, t.lr)
        self.state = initial_state(cfg)
        self.batch = t.batch_size
        self.first, self.stop_at = distributed.shard(self.batch, self.ctx.rank, self.ctx.world)  # this rank's episodes
        self.total_steps = math.ceil(t.episodes / self.batch)
        self.steps_per_log = max(1, math.ceil(LOG_EVERY_EPISODES / self.batch))
        self.steps_per_eval = max(1, math.ceil(t.eval_every / self.batch)) if self.checks_on else 0
        self.steps_per_ckpt = max(1, math.ceil(t.checkpoint_every / self.batch))
        d = cfg.data
        photometric = Photometric(d.augment_invert, d.augment_contrast, d.augment_brightness)
        self.jitter = Compose(Jitter(d.jitter_shift, d.jitter_rotate), photometric)
        self.use_jitter = (d.jitter_shift > 0 or d.jitter_rotate > 0 or photometric.active()) \
            and not isinstance(self.train_bank, FeatureBank)

    def restore(self) -> None:
        """Continue from ``self.ckpt``: weights, optimiser, loop state; the log cut back to it."""
        restore(self.model, self.optimizer, self.state, self.ckpt, self.ckpt_path)
        if self.main and self.metrics_path.exists() and self.metrics_path.stat().st_size > self.state["metrics_bytes"]:
            with open(self.metrics_path, "r+b") as f:  # drop lines written after the checkpoint
                f.truncate(self.state["metrics_bytes"])
        self.log(f"resuming {self.out} at {self.state['episodes_done']:,} episodes")
        self.origin = self.ckpt.get("init_from") if isinstance(self.ckpt.get("init_from"), dict) else None

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict:
        """Step until the budget is spent or a signal stops the run; returns the summary."""
        self.announce()
        interrupted = None
        self.model.train()
        if self.cfg.train.max_minutes and self.ctx.enabled:
            raise UserError("--max-minutes is for single-process runs (ranks would stop at different steps)")
        with _StopFlag() as stop:
            while self.state["step"] < self.total_steps and not self.out_of_time():
                agreed_signal = self.step(stop)
                self.after_step()
                # one look at the flag per step; under torchrun the ranks agreed on it in step()
                stop_signal = agreed_signal if self.ctx.enabled else stop.signal
                if stop_signal is not None:
                    interrupted = stop_signal
                    self.save()
                    break
        return self.finish(interrupted)

    def announce(self) -> None:
        """The first line of a new run, and the progress bar."""
        cfg, ctx = self.cfg, self.ctx
        if self.ckpt is None:
            self.log(f"training {cfg.model.model} ({count_parameters(self.model):,} parameters) on {self.device}"
                     + (f" x {ctx.world} processes" if ctx.enabled else "") + ": "
                     f"{cfg.episodes.ways}-way, {cfg.episodes.instances} instances, {cfg.episodes.labels} labels, "
                     f"{self.train_bank.num_classes:,} training / {self.val_bank.num_classes:,} validation classes "
                     f"({self.test_classes:,} test classes kept for evaluate)")
        if self.progress:
            from tqdm import tqdm
            self.bar = tqdm(total=self.total_steps * self.batch, initial=self.state["episodes_done"], unit="ep",
                            desc="training", dynamic_ncols=True, smoothing=0.05)

    def episode_batch(self, step: int):
        """The TensorBatch of ``step`` (this rank's share): a pure function of (seed, step)."""
        cfg, ctx = self.cfg, self.ctx
        rng = batch_rng(cfg.train.seed, step)
        episodes = sample_episodes(self.train_bank, cfg.episodes, rng, self.batch)
        self.mark("sample")
        gen = torch.Generator().manual_seed(int(rng.integers(2**62))) if self.use_jitter else None
        if not ctx.enabled:
            tb = to_tensors(episodes, cfg.episodes, self.device, augment=self.jitter if self.use_jitter else None,
                            generator=gen)
        elif self.use_jitter:  # the jitter of the whole batch, as one process draws it
            tb = distributed.shard_batch(to_tensors(episodes, cfg.episodes, self.device, augment=self.jitter,
                                                    generator=gen), self.first, self.stop_at)
        else:
            tb = to_tensors(distributed.shard_batch(episodes, self.first, self.stop_at), cfg.episodes, self.device)
        self.mark("to_tensors")
        return tb

    def step(self, stop: _StopFlag):
        """One optimiser step (or a skipped non-finite batch). Under torchrun returns the signal
        the ranks agreed on (None: go on); else None, the caller reads the flag itself."""
        cfg, ctx, state, step = self.cfg, self.ctx, self.state, self.state["step"]
        t0 = time.perf_counter()
        tb = self.episode_batch(step)
        logits = self.forward(tb.images, tb.label_inputs)
        loss = loss_fn(logits, tb.targets, cfg.episodes)
        if ctx.enabled:  # this rank's share of the global mean: the ranks' gradients sum to it
            loss = loss * ((self.stop_at - self.first) / self.batch)
        self.mark("forward")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.mark("backward")
        with torch.no_grad():
            correct = correct_steps(logits.detach(), tb.targets, cfg.episodes)
            acc = [float(a) for a in per_episode_instance_accuracy(correct, tb.instance, cfg.episodes.instances).sum(0)]
        loss_value = float(loss.detach())
        agreed_signal = None
        if ctx.enabled:
            loss_value, acc, agreed_signal = self.sum_over_ranks(loss_value, acc, stop.signal)
        grad_clip = cfg.train.grad_clip if cfg.train.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), grad_clip)
        if math.isfinite(loss_value) and math.isfinite(float(norm)):
            self.update(step, loss_value, acc)
        else:
            self.skip_nonfinite(step)
        state["step"] = step + 1
        state["episodes_done"] = (step + 1) * self.batch
        state["train_seconds"] += time.perf_counter() - t0
        if self.bar is not None:
            self.bar.update(self.batch)
        return agreed_signal

    def sum_over_ranks(self, loss_value: float, acc: list[float], signum):
        """The gradients, loss, accuracy sums and stop signals of all ranks, summed (torchrun)."""
        distributed.sum_gradients(self.model.parameters(), self.ctx)
        totals = distributed.sum_values(
            [loss_value, *acc, float(signum == signal.SIGINT), float(signum == signal.SIGTERM)], self.ctx, self.device)
        agreed = signal.SIGINT if totals[-2] else signal.SIGTERM if totals[-1] else None
        return totals[0], totals[1:-2], agreed

    def update(self, step: int, loss_value: float, acc: list[float]) -> None:
        """Adam at this step's learning rate; the batch's loss and accuracy join the running sums."""
        state = self.state
        for group in self.optimizer.param_groups:  # step decay: a function of episodes seen only
            group["lr"] = learning_rate(self.cfg.train, step * self.batch)
        self.optimizer.step()
        state["acc_loss"] += loss_value
        state["acc_steps"] += 1
        state["acc_correct"] = [a + b for a, b in zip(state["acc_correct"], acc)]
        state["acc_count"] = [a + self.batch for a in state["acc_count"]]

    def skip_nonfinite(self, step: int) -> None:
        """A NaN/inf loss or gradient: stop without updating (UserError), or, with
        --skip-nonfinite, drop the batch and count it."""
        if not self.cfg.train.skip_nonfinite:
            if self.bar is not None:
                self.bar.close()
            kept = (f"the last good checkpoint is kept at {self.ckpt_path} (resume with --resume, or pass "
                    "--skip-nonfinite to skip such batches)") if self.main and self.ckpt_path.exists() else \
                "no checkpoint was written yet (pass --skip-nonfinite to skip such batches)"
            raise UserError(f"non-finite loss or gradient at step {step} ({self.state['episodes_done']:,} episodes); "
                            f"stopped without updating; {kept}")
        self.optimizer.zero_grad(set_to_none=True)
        self.state["nonfinite_skipped"] += 1
        self.log(f"warning: skipped a batch with a non-finite loss/gradient at step {step}")

    def out_of_time(self) -> bool:
        """The time budget (``train.max_minutes`` of training time, resumes included) is spent."""
        budget = self.cfg.train.max_minutes
        return bool(budget) and self.state["train_seconds"] >= 60 * budget

    def after_step(self) -> None:
        """The log line, validation and checkpoint that fall due after the step just taken."""
        done = self.state["step"]
        last = done == self.total_steps or self.out_of_time()
        if last and done < self.total_steps:
            (self.bar.write if self.bar is not None else self.log)(
                f"time budget of {self.cfg.train.max_minutes:g} min reached at {self.state['episodes_done']:,} episodes")
        if done % self.steps_per_log == 0 or last:
            self.log_training()
        if self.steps_per_eval and (done % self.steps_per_eval == 0 or last):
            res = self.validate()
            msg = " ".join(f"{100 * a:.1f}" for a in res["accuracy_by_instance"])
            (self.bar.write if self.bar is not None else self.log)(
                f"[{self.state['episodes_done']:,} episodes] validation accuracy by instance (%): {msg}")
        if done % self.steps_per_ckpt == 0 or last:
            self.save()

    # ------------------------------------------------------------------ logs and checkpoints

    def log_training(self) -> None:
        """A ``{"kind": "train", ...}`` line of the running means since the last one; sums reset."""
        state, instances = self.state, self.cfg.episodes.instances
        n = max(1, state["acc_steps"])
        acc_inst = [c / max(1.0, k) for c, k in zip(state["acc_correct"], state["acc_count"])]
        if self.main:
            append_line(self.metrics_path, json.dumps({
                "kind": "train", "episodes": state["episodes_done"], "loss": state["acc_loss"] / n,
                "accuracy_by_instance": acc_inst, "train_seconds": round(state["train_seconds"], 3)}))
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{state['acc_loss'] / n:.3f}",
                                 acc2=f"{acc_inst[1] if len(acc_inst) > 1 else acc_inst[0]:.3f}")
        state["acc_loss"], state["acc_steps"] = 0.0, 0
        state["acc_correct"] = [0.0] * instances
        state["acc_count"] = [0.0] * instances

    def validate(self) -> dict:
        """Accuracy on the validation classes only (the test classes are for evaluate / kshot /
        knn), logged as a ``{"kind": "eval", ...}`` line and kept as the state's last_eval."""
        state, t = self.state, self.cfg.train
        res = distributed.evaluate_sharded(self.model, self.val_bank, self.cfg.episodes, self.ctx,
                                           episodes=t.eval_episodes, seed=t.seed, device=self.device)
        res.pop("_per_episode")
        entry = {"kind": "eval", "classes": "validation", **res, "episodes": state["episodes_done"],
                 "eval_episodes": res["episodes"], "train_seconds": round(state["train_seconds"], 3)}
        if self.main:
            append_line(self.metrics_path, json.dumps(entry))
        state["last_eval"] = {"episodes": state["episodes_done"], "classes": "validation",
                              "accuracy_by_instance": res["accuracy_by_instance"]}
        return res

    def save(self) -> None:
        """checkpoint.pt (atomic; rank 0): weights, optimiser, loop state, and the log's length
        so that a resume can drop lines written after it."""
        if not self.main:
            return
        state = self.state
        state["metrics_bytes"] = self.metrics_path.stat().st_size if self.metrics_path.exists() else 0
        save_checkpoint(self.ckpt_path, {
            "config": self.config_dict, "command": self.command, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "state": dict(state),
            "step": state["step"], "episodes_done": state["episodes_done"],
            **({"init_from": self.origin} if self.origin else {}),
            "classes": self.classes_record,
            **({image_record.KEY: self.train_images} if self.train_images is not None else {}),
        })

    def finish(self, interrupted) -> dict:
        """Close the bar, save a run of zero steps, wait for rank 0's last save; the summary."""
        state = self.state
        if self.bar is not None:
            self.bar.close()
        if state["step"] == 0 and self.total_steps == 0:
            self.save()
        distributed.barrier(self.ctx)  # every rank returns after rank 0's last save
        if interrupted is not None:
            self.log(f"interrupted: checkpoint saved at {state['episodes_done']:,} episodes in {self.ckpt_path}; "
                     "continue with --resume")
        return {"out": str(self.out), "episodes_done": state["episodes_done"], "steps": state["step"],
                "train_seconds": state["train_seconds"], "last_eval": state["last_eval"],
                "interrupted": interrupted, "rank": self.ctx.rank, "world_size": self.ctx.world}
