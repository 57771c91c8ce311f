"""Training loop on synthetic banks: determinism, resume, run-directory rules, non-finite stop."""
from __future__ import annotations

import json
import signal

import pytest
import torch

from helpers import as_split, synthetic_bank, tiny_config
from fewshot_mann.engine import trainer as training
from fewshot_mann.engine.checkpoint import load_checkpoint
from fewshot_mann.errors import UserError


@pytest.fixture(autouse=True)
def synthetic_data(monkeypatch):
    banks = (synthetic_bank(classes=10, per_class=12, seed=1), synthetic_bank(classes=6, per_class=12, seed=2))
    monkeypatch.setattr(training, "load_split_banks", as_split(lambda cfg, progress=True: banks))


def small_cfg(episodes=48):
    cfg = tiny_config()
    cfg.episodes.ways, cfg.episodes.instances = 3, 4
    cfg.train.episodes, cfg.train.batch_size = episodes, 4
    cfg.train.eval_every, cfg.train.eval_episodes, cfg.train.checkpoint_every = 16, 20, 8
    cfg.data.rotations = False
    return cfg


def run(cfg, out, **kw):
    return training.train(cfg, out, progress=False, log=lambda m: None, **kw)


def metrics_without_times(path):
    rows = [json.loads(l) for l in open(path)]
    for r in rows:
        r.pop("train_seconds", None)
    return rows


def assert_same_state(a, b):
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    for k in sa:
        for field in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(sa[k][field], sb[k][field])


def test_same_seed_same_run(tmp_path):
    run(small_cfg(), tmp_path / "a")
    run(small_cfg(), tmp_path / "b")
    assert metrics_without_times(tmp_path / "a/metrics.jsonl") == metrics_without_times(tmp_path / "b/metrics.jsonl")
    assert_same_state(load_checkpoint(tmp_path / "a/checkpoint.pt"), load_checkpoint(tmp_path / "b/checkpoint.pt"))
    evals = [r for r in metrics_without_times(tmp_path / "a/metrics.jsonl") if r["kind"] == "eval"]
    assert [r["episodes"] for r in evals] == [16, 32, 48] and len(evals[0]["accuracy_by_instance"]) == 4


class StopAfter:
    """Stands in for the SIGINT/SIGTERM flag: 'signalled' after ``steps`` steps."""

    def __init__(self, steps):
        self.steps, self.seen = steps, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @property
    def signal(self):
        self.seen += 1
        return signal.SIGINT if self.seen >= self.steps else None


def test_interrupted_run_resumes_identically(tmp_path, monkeypatch):
    run(small_cfg(48), tmp_path / "straight")
    with monkeypatch.context() as m:
        m.setattr(training, "_StopFlag", lambda: StopAfter(5))
        summary = run(small_cfg(48), tmp_path / "split")
    assert summary["interrupted"] == signal.SIGINT and summary["episodes_done"] == 20
    summary = run(small_cfg(48), tmp_path / "split", resume=True)
    assert summary["episodes_done"] == 48
    assert metrics_without_times(tmp_path / "straight/metrics.jsonl") == \
        metrics_without_times(tmp_path / "split/metrics.jsonl")
    assert_same_state(load_checkpoint(tmp_path / "straight/checkpoint.pt"),
                      load_checkpoint(tmp_path / "split/checkpoint.pt"))


def test_existing_run_is_not_overwritten(tmp_path):
    run(small_cfg(8), tmp_path / "r")
    with pytest.raises(UserError, match="--resume .* --overwrite"):
        run(small_cfg(8), tmp_path / "r")
    run(small_cfg(8), tmp_path / "r", overwrite=True)


def test_checkpoint_loads_with_weights_only_and_holds_config(tmp_path):
    run(small_cfg(8), tmp_path / "r")
    raw = torch.load(tmp_path / "r/checkpoint.pt", weights_only=True)
    assert raw["format"] == "fewshot-mann" and raw["config"]["model"]["memory_slots"] == 10
    assert json.loads((tmp_path / "r/config.json").read_text())["config"] == raw["config"]


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    cfg = small_cfg(32)
    run(small_cfg(16), tmp_path / "r")
    before = load_checkpoint(tmp_path / "r/checkpoint.pt")
    real = training.loss_fn
    monkeypatch.setattr(training, "loss_fn", lambda *a: real(*a) * float("nan"))
    with pytest.raises(UserError, match="non-finite loss"):
        run(cfg, tmp_path / "r", resume=True)
    after = load_checkpoint(tmp_path / "r/checkpoint.pt")
    assert after["episodes_done"] == 16
    assert_same_state(before, after)
    cfg.train.skip_nonfinite = True
    summary = run(cfg, tmp_path / "r", resume=True)
    assert summary["episodes_done"] == 32


def test_learning_rate_decays_after_the_given_episodes(tmp_path):
    from fewshot_mann.engine.trainer import learning_rate
    cfg = small_cfg(32)
    cfg.train.lr_decay_at, cfg.train.lr_decay_factor = 16, 0.1
    assert learning_rate(cfg.train, 15) == cfg.train.lr and learning_rate(cfg.train, 16) == cfg.train.lr * 0.1
    run(cfg, tmp_path / "r")
    ckpt = load_checkpoint(tmp_path / "r/checkpoint.pt")
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(cfg.train.lr * 0.1)
    assert ckpt["config"]["train"]["lr_decay_at"] == 16
    # Extending a run may set the schedule; it is recorded in the checkpoint's config.
    cfg2 = small_cfg(48)
    cfg2.train.lr_decay_at = 40
    run(cfg2, tmp_path / "r", resume=True)
    assert load_checkpoint(tmp_path / "r/checkpoint.pt")["config"]["train"]["lr_decay_at"] == 40


def test_init_from_records_the_episodes_behind_the_weights(tmp_path):
    from fewshot_mann.reporting.records import training_record
    run(small_cfg(16), tmp_path / "base")
    run(small_cfg(8), tmp_path / "tuned", init_from=str(tmp_path / "base/checkpoint.pt"))
    tuned = load_checkpoint(tmp_path / "tuned/checkpoint.pt")
    assert tuned["init_from"]["episodes"] == 16
    record = training_record(tuned)
    assert record["episodes"] == 8 and record["episodes_including_init"] == 24
    # kept across a resume, and chained through a second --init-from
    run(small_cfg(12), tmp_path / "tuned", resume=True)
    assert load_checkpoint(tmp_path / "tuned/checkpoint.pt")["init_from"]["episodes"] == 16
    run(small_cfg(4), tmp_path / "again", init_from=str(tmp_path / "tuned/checkpoint.pt"))
    assert load_checkpoint(tmp_path / "again/checkpoint.pt")["init_from"]["episodes"] == 28


def test_training_draws_and_rotates_training_classes_only(tmp_path, monkeypatch):
    """Banks told apart by pixel value and name: training batches hold training classes (and
    their rotations) only, only the training bank is rotated, and the in-training checks run on
    the validation classes, unrotated."""
    import numpy as np

    from fewshot_mann.data.bank import ClassBank, SplitBanks

    def bank(prefix, value, classes):
        pattern = np.arange(36, dtype=np.uint8).reshape(1, 1, 6, 6) % 3  # not rotation-invariant
        groups = [np.repeat(pattern + value, 6, axis=0) for _ in range(classes)]
        return ClassBank.from_groups(groups, [f"{prefix}{c}" for c in range(classes)])

    train, validation, test = bank("train", 10, 5), bank("validation", 20, 4), bank("test", 30, 4)
    monkeypatch.setattr(training, "load_split_banks", lambda cfg, progress=True: SplitBanks(train, validation, test))
    rotated, drawn, checked = [], [], []
    real_rotations = ClassBank.with_rotations

    def with_rotations(self):
        rotated.append(list(self.names))
        return real_rotations(self)
    monkeypatch.setattr(ClassBank, "with_rotations", with_rotations)
    real_sample = training.sample_episodes

    def sample(b, cfg, rng, n):
        episodes = real_sample(b, cfg, rng, n)
        drawn.append(({b.names[c] for c in episodes.classes.ravel()}, set(np.unique(episodes.images // 10))))
        return episodes
    monkeypatch.setattr(training, "sample_episodes", sample)
    real_eval = training.distributed.evaluate_sharded

    def evaluate_sharded(model, b, *args, **kw):
        checked.append((list(b.names), set(np.unique(b.images // 10))))
        return real_eval(model, b, *args, **kw)
    monkeypatch.setattr(training.distributed, "evaluate_sharded", evaluate_sharded)

    cfg = small_cfg(48)
    cfg.data.rotations = True
    run(cfg, tmp_path / "r")
    assert rotated == [["train0", "train1", "train2", "train3", "train4"]]
    allowed = {f"train{c}{r}" for c in range(5) for r in ("", "@rot90", "@rot180", "@rot270")}
    names = set().union(*(n for n, _ in drawn))
    assert len(drawn) == 12 and names <= allowed, names - allowed
    assert any("@rot" in n for n in names)  # rotations are on and drawn
    assert all(values == {1} for _, values in drawn)  # pixel values 10..12: training images only
    assert checked and all(c == (["validation0", "validation1", "validation2", "validation3"], {2})
                           for c in checked)


def test_a_time_budget_ends_the_run_as_its_last_episode_would(tmp_path, monkeypatch):
    clock = iter(range(0, 10_000, 30))  # every perf_counter() call: 30 s later, so each step "takes" 30 s
    monkeypatch.setattr(training.time, "perf_counter", lambda: float(next(clock)))
    cfg = small_cfg(episodes=400)
    cfg.train.max_minutes = 1.5  # three 30 s steps
    logs = []
    summary = training.train(cfg, tmp_path / "r", progress=False, log=logs.append)
    assert summary["steps"] == 3 and summary["interrupted"] is None
    ckpt = load_checkpoint(tmp_path / "r" / "checkpoint.pt")
    assert ckpt["episodes_done"] == 12  # the checkpoint of the last step taken
    rows = [json.loads(l) for l in open(tmp_path / "r" / "metrics.jsonl")]
    assert rows[-1]["kind"] == "eval" and rows[-1]["episodes"] == 12  # the final check, as at a run's end
    assert any("time budget of 1.5 min reached at 12 episodes" in m for m in logs)


def test_time_to_accuracy_finds_the_first_check_at_each_target():
    from fewshot_mann.reporting.time_to_accuracy import TARGETS, first_met, format_first_met

    def check(episodes, seconds, accs):
        return {"kind": "eval", "episodes": episodes, "train_seconds": seconds, "accuracy_by_instance": accs}
    checks = [check(100, 10.0, [0.30, 0.70, 0.80, 0.90, 0.90, 0.9, 0.9, 0.9, 0.9, 0.90]),
              check(200, 20.0, [0.40, 0.85, 0.92, 0.93, 0.95, 0.9, 0.9, 0.9, 0.9, 0.97]),
              check(300, 30.0, [0.35, 0.90, 0.95, 0.96, 0.97, 0.9, 0.9, 0.9, 0.9, 0.99])]
    met = first_met(checks)
    assert TARGETS == {1: 36.4, 2: 82.8, 3: 91.0, 4: 92.6, 5: 94.9, 10: 98.1}
    assert {i: (h or {}).get("train_seconds") for i, h in met.items()} == {1: 20.0, 2: 20.0, 3: 20.0, 4: 20.0,
                                                                        5: 20.0, 10: 30.0}
    assert "every target met after 30 s of training" in format_first_met(met)
    assert first_met(checks[:1])[1] is None and "0 of 6 targets met" in format_first_met(first_met(checks[:1]))


def test_bench_time_to_accuracy_trains_the_preset_and_reports(tmp_path, capsys, monkeypatch):
    from fewshot_mann.cli import bench

    preset = tmp_path / "preset.json"
    cfg = small_cfg(episodes=32)
    preset.write_text(json.dumps({"data": {"image_size": 6, "rotations": False}, "episodes": {"ways": 3, "instances": 4},
                                  "model": {k: getattr(cfg.model, k) for k in ("controller_size", "memory_slots",
                                                                               "memory_width", "num_read_heads")},
                                  "train": {"episodes": 32, "batch_size": 4, "eval_every": 16, "eval_episodes": 8}}))
    out = tmp_path / "tta.json"
    plot = tmp_path / "tta.png"
    assert bench.main(["--time-to-accuracy", str(preset), "--json", str(out), "--plot", str(plot)]) == 0, \
        capsys.readouterr().err
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads(out.read_text())
    assert [c["episodes"] for c in res["checks"]] == [16, 32] and set(res["first_met"]) == {"1", "2", "3", "4", "5", "10"}
    assert "targets met" in capsys.readouterr().out


def test_bench_times_the_very_step_a_run_takes(tmp_path):
    """Issue 26: ``bench`` steps ``Trainer.step`` itself, so two bench steps leave the weights a
    two-step run leaves, photometric augmentation and jitter included."""
    import copy

    from fewshot_mann.engine.bench import TrainingLoop

    cfg = small_cfg(8)
    cfg.train.eval_every = 0
    cfg.data.jitter_shift, cfg.data.augment_invert, cfg.data.augment_contrast = 1.0, 0.5, 0.2
    run(copy.deepcopy(cfg), tmp_path / "r")
    trained = load_checkpoint(tmp_path / "r" / "checkpoint.pt")["model"]
    loop = TrainingLoop(copy.deepcopy(cfg), synthetic_bank(classes=10, per_class=12, seed=1))
    loop.step()
    loop.step()
    assert loop.steps == 2
    for name, value in loop.model.state_dict().items():
        assert torch.equal(value, trained[name]), name
