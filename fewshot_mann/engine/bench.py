"""Speed benchmark: the plain reference MANN loop against the project's training step.

``fewshot-mann bench`` (options: cli/bench.py) runs, in one process and on
the same episodes, a training step built on ``reference.reference_forward`` (per step,
per head, ``F.cosine_similarity``, a fresh least-used mask every step: how one would
first write MANN in PyTorch) and the project's training step (``models.MANN`` on its
fast path, and any other ``--models``). Both run the very step of a run
(``trainer.Trainer.step``): sampling, ``to_tensors`` (and the run's augmentation, photometric
included, if asked), forward, loss, backward, gradient clipping, the Adam step and the accuracy
bookkeeping. The measurements are interleaved in rounds so that a change of background
load hits both alike; rates are given per wall-clock second and per CPU second of this
process (the latter is steadier on a shared machine). It also measures evaluation
(``evaluation.evaluate``, no gradient, sampling included, and the model's forward
alone), where the time of a training step goes, and the peak resident memory.

Data: a synthetic ``ClassBank`` of random uint8 images shaped like Omniglot's training
set (1,200 classes x 20 images, times 4 rotations), or real Omniglot with ``--data-root``.
"""
from __future__ import annotations

import os
import platform
import sys
import time

import numpy as np
import torch

from fewshot_mann.data.bank import ClassBank
from fewshot_mann.config import Config
from fewshot_mann.errors import UserError

PHASES = ("sample", "to_tensors", "forward", "backward", "optimiser")


def synthetic_bank(classes: int, per_class: int, size: int, seed: int) -> ClassBank:
    """Random uint8 images: ``classes`` classes of ``per_class`` images (1, size, size)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (classes * per_class, 1, size, size), dtype=np.uint8)
    return ClassBank.from_groups(np.split(images, classes), [f"class{i}" for i in range(classes)])


def _config(args, model: str) -> Config:
    cfg = Config()
    cfg.model.model = model
    cfg.model.key_strength = bool(args.key_strength)
    cfg.train.batch_size = args.batch_size
    cfg.train.seed = args.seed
    cfg.data.jitter_shift, cfg.data.jitter_rotate = args.jitter_shift, args.jitter_rotate
    if args.data_root:
        cfg.data.data_root = args.data_root
    cfg.validate()
    return cfg


class TrainingLoop:
    """One model, its Adam optimiser and a step counter; ``step()`` is ``Trainer.step``, the very
    training step of a run (sampling, ``to_tensors`` with the run's augmentation, forward, loss,
    backward, clipping, Adam, the accuracy sums), with a CPU-time counter per phase."""

    def __init__(self, cfg: Config, bank: ClassBank, forward=None):
        from fewshot_mann.engine.trainer import Trainer

        cfg.train.skip_nonfinite = True  # a benchmark times steps; a non-finite batch is skipped, as a run can
        self.cfg, self.bank = cfg, bank
        self.trainer = Trainer.on_bank(cfg, bank)
        self.model = self.trainer.model
        self.model.train()
        if forward is not None:
            self.trainer.forward = forward
        self.trainer.mark = self._mark
        self.phase_seconds = dict.fromkeys(PHASES, 0.0)
        self._clock = time.process_time()

    @property
    def steps(self) -> int:
        return self.trainer.state["step"]

    def _mark(self, phase: str) -> None:  # CPU time of this process: steadier than wall time on a busy machine
        now = time.process_time()
        self.phase_seconds[phase] += now - self._clock
        self._clock = now

    def step(self) -> None:
        self._clock = time.process_time()
        self.trainer.step(None)
        self._mark("optimiser")


def _reference_loop(cfg: Config, bank: ClassBank) -> TrainingLoop:
    from fewshot_mann.memory.lrua.reference import reference_forward

    loop = TrainingLoop(cfg, bank)
    model = loop.model
    loop.trainer.forward = lambda images, label_inputs: reference_forward(model, images, label_inputs)
    return loop


def measure_training(loops: dict[str, TrainingLoop], seconds: float, rounds: int) -> dict[str, dict]:
    """Interleave ``rounds`` rounds of ``seconds / rounds / len(loops)`` per loop."""
    for loop in loops.values():  # warm-up: first-call allocations, lazy imports
        loop.step()
        loop.phase_seconds = dict.fromkeys(PHASES, 0.0)
        loop.steps_timed = 0
    totals = {name: [0.0, 0.0, 0] for name in loops}  # wall, cpu, steps
    share = seconds / max(1, rounds)
    for _ in range(rounds):
        for name, loop in loops.items():
            wall0, cpu0, steps = time.perf_counter(), time.process_time(), 0
            while time.perf_counter() - wall0 < share or steps == 0:
                loop.step()
                steps += 1
            totals[name][0] += time.perf_counter() - wall0
            totals[name][1] += time.process_time() - cpu0
            totals[name][2] += steps
    out = {}
    for name, (wall, cpu, steps) in totals.items():
        loop = loops[name]
        episodes = steps * loop.cfg.train.batch_size
        out[name] = {
            "episodes": episodes, "wall_seconds": wall, "cpu_seconds": cpu,
            "episodes_per_s": episodes / wall, "cpu_episodes_per_s": episodes / cpu,
            "ms_per_step": {p: 1e3 * s / steps for p, s in loop.phase_seconds.items()},
        }
    return out


def measure_evaluation(model: torch.nn.Module, cfg: Config, bank: ClassBank, batch: int, seconds: float) -> dict:
    """Episodes/s of ``evaluation.evaluate`` (sampling included) and of the forward alone."""
    from fewshot_mann.data.episodes import evaluation_episodes, to_tensors
    from fewshot_mann.engine.evaluation import evaluate

    evaluate(model, bank, cfg.episodes, episodes=batch, seed=1, batch_size=batch)  # warm-up
    done, wall0 = 0, time.perf_counter()
    while time.perf_counter() - wall0 < seconds or done == 0:
        evaluate(model, bank, cfg.episodes, episodes=batch, seed=1, start=done, batch_size=batch)
        done += batch
    full = done / (time.perf_counter() - wall0)
    tb = to_tensors(evaluation_episodes(bank, cfg.episodes, 1, 0, batch), cfg.episodes)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        model(tb.images, tb.label_inputs)
        done, wall0 = 0, time.perf_counter()
        while time.perf_counter() - wall0 < seconds or done == 0:
            model(tb.images, tb.label_inputs)
            done += batch
        forward = done / (time.perf_counter() - wall0)
    model.train(was_training)
    return {"batch_size": batch, "episodes_per_s": full, "forward_episodes_per_s": forward}


def measure_backbone(encoder: str, weights: str, seconds: float, batch: int = 32) -> dict:
    """Images/s of feature extraction (``features.run_backbone``: inference mode, the path the
    feature cache fills through) at the backbone's input size, in the contiguous and the
    channels_last memory format; random uint8 images, so nothing is read from disk."""
    from fewshot_mann.models.features import native_bf16, run_backbone
    from fewshot_mann.models.backbones import build_backbone, preprocessing

    prep = preprocessing(encoder)
    net, _ = build_backbone(encoder, weights)
    images = np.random.default_rng(0).integers(0, 256, (2 * batch, 3, prep.image_size, prep.image_size), dtype=np.uint8)
    out = {"encoder": encoder, "weights": weights, "image_size": prep.image_size, "batch_size": batch}
    runs = [("contiguous", torch.contiguous_format, "fp32"), ("channels_last", torch.channels_last, "fp32")]
    if native_bf16():  # what embed_precision auto picks on this CPU
        runs.append(("channels_last_bf16", torch.channels_last, "bf16"))
    for fmt, memory_format, precision in runs:
        kw = dict(progress=False, batch=batch, memory_format=memory_format, precision=precision)
        run_backbone(net, images[:batch], prep, **kw)  # warm-up
        done, wall0 = 0, time.perf_counter()
        while time.perf_counter() - wall0 < seconds or done == 0:
            run_backbone(net, images, prep, **kw)
            done += len(images)
        out[f"{fmt}_images_per_s"] = done / (time.perf_counter() - wall0)
    return out


def profile_steps(loop: TrainingLoop, steps: int, top: int = 12) -> list[dict]:
    """The ``top`` operators by self CPU time over ``steps`` training steps (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            loop.step()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows) or 1.0
    return [{"op": e.key, "calls_per_step": e.count / steps, "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
             "share": e.self_cpu_time_total / total} for e in rows[:top]]


def _rss_mib() -> float:
    """Current resident set size of this process (MiB)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return float("nan")


def _peak_rss_mib() -> float:
    """Peak resident set size of this process so far (MiB); NaN where ``resource`` is missing (Windows)."""
    try:
        import resource
    except ImportError:
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def measure_rss(loop: TrainingLoop, steps: int) -> dict:
    """Resident memory every ``steps // 20`` training steps: it must not grow."""
    every = max(1, steps // 20)
    samples = []
    for i in range(steps):
        loop.step()
        if (i + 1) % every == 0:
            samples.append((i + 1, round(_rss_mib(), 1)))
    return {"steps": steps, "rss_mib": samples}


def _load_bank(args, cfg: Config) -> ClassBank:
    if args.data_root:
        from fewshot_mann.engine.loading import load_banks
        train_bank, _ = load_banks(cfg, progress=False)
    else:
        train_bank = synthetic_bank(args.synthetic_classes, 20, cfg.data.image_size, args.seed)
    return train_bank.with_rotations()


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPU cores"


def format_report(res: dict) -> str:
    lines = [f"fewshot-mann bench  {res['date']}  torch {res['torch']}  {res['threads']} thread(s)  {res['machine']}",
             f"load average at start / end: {res['load_start']} / {res['load_end']}",
             f"config: {res['config']}",
             "",
             "training (sampling + to_tensors + forward + backward + clip + Adam), episodes/s",
             f"{'loop':<22}{'wall ep/s':>11}{'CPU ep/s':>11}{'x ref (wall)':>14}{'x ref (CPU)':>13}"]
    ref = res["training"].get("reference")
    for name, r in res["training"].items():
        ratio = (f"{r['episodes_per_s'] / ref['episodes_per_s']:14.1f}"
                 f"{r['cpu_episodes_per_s'] / ref['cpu_episodes_per_s']:13.1f}" if ref else "")
        lines.append(f"{name:<22}{r['episodes_per_s']:11.1f}{r['cpu_episodes_per_s']:11.1f}{ratio}")
    if res.get("cpp_load_seconds") is not None:
        lines.append("C++ LRUA kernel: " + (f"unavailable ({res['cpp_unavailable']}); mann ran fast.py"
                                             if res.get("cpp_unavailable") else
                                             f"built or loaded in {res['cpp_load_seconds']:.1f} s wall"))
    lines += ["", "where a training step goes (CPU ms per step)",
              f"{'loop':<22}" + "".join(f"{p:>11}" for p in PHASES) + f"{'total':>11}"]
    for name, r in res["training"].items():
        ms = r["ms_per_step"]
        lines.append(f"{name:<22}" + "".join(f"{ms[p]:11.2f}" for p in PHASES) + f"{sum(ms.values()):11.2f}")
    if res["evaluation"]:
        lines += ["", "evaluation (no gradient), episodes/s",
                  f"{'model':<22}{'batch':>7}{'evaluate()':>12}{'forward only':>14}"]
        for r in res["evaluation"]:
            lines.append(f"{r['model']:<22}{r['batch_size']:7d}{r['episodes_per_s']:12.1f}"
                         f"{r['forward_episodes_per_s']:14.1f}")
    if res.get("backbones"):
        lines += ["", "backbone feature extraction (inference mode), images/s",
                  f"{'backbone':<30}{'px':>5}{'batch':>7}{'contiguous':>12}{'channels_last':>15}{'+ bf16':>9}"]
        for r in res["backbones"]:
            bf16 = r.get("channels_last_bf16_images_per_s")
            lines.append(f"{r['encoder']:<30}{r['image_size']:5d}{r['batch_size']:7d}"
                         f"{r['contiguous_images_per_s']:12.1f}{r['channels_last_images_per_s']:15.1f}"
                         + (f"{bf16:9.1f}" if bf16 is not None else f"{'-':>9}"))
    if res.get("rss"):
        samples = res["rss"]["rss_mib"]
        lines += ["", f"resident memory over {res['rss']['steps']} MANN training steps (MiB): "
                  + ", ".join(f"{s}:{m}" for s, m in samples)]
    if res.get("profiles"):
        for name, rows in res["profiles"].items():
            lines += ["", f"torch.profiler, {name}: top operators by self CPU time (ms per training step)"]
            lines += [f"  {r['op']:<44}{r['self_ms_per_step']:9.2f} ms {100 * r['share']:5.1f}%  "
                      f"{r['calls_per_step']:7.0f} calls" for r in rows]
    lines += ["", f"peak RSS: {res['peak_rss_project_mib']:.0f} MiB after the project's loops and evaluations, "
              f"{res['peak_rss_mib']:.0f} MiB at the end (the reference's autograd graph included)"]
    return "\n".join(lines)


AUTOGRAD = "mann-autograd"  # MANN, memory backend autograd: the step-by-step equations
CPP = "mann-cpp"  # MANN, memory backend kernel: the C++ kernel (lrua/kernel.py), required to load
FAST = "mann-fast"  # MANN, memory backend sequence: the Python fast path (lrua/sequence.py)
VARIANTS = {AUTOGRAD: "autograd", CPP: "kernel", FAST: "sequence"}  # bench name -> memory backend


def _loop_config(args, name: str) -> Config:
    cfg = _config(args, "mann" if name in VARIANTS else name)
    cfg.model.memory_backend = VARIANTS.get(name, "auto")
    return cfg


def _load_kernel(models: list[str]) -> tuple[float | None, str | None]:
    """Build (first use) or load the C++ kernel if a model needs it: (seconds, why unavailable)."""
    if not any(name in ("mann", CPP) for name in models):
        return None, None
    from fewshot_mann.memory.backend import kernel_unavailable_reason
    wall0 = time.perf_counter()
    reason = kernel_unavailable_reason()
    seconds = time.perf_counter() - wall0
    if reason is not None and CPP in models:
        raise UserError(f"--models {CPP}: the C++ LRUA kernel is unavailable ({reason})")
    return seconds, reason


def _time_evaluations(models: list[str], loops: dict, bank, batches: list[int], seconds: float) -> list[dict]:
    """Evaluation speed of each model's loop at each batch size."""
    evaluation = []
    for name in models:
        loop = loops[name]
        for batch in batches:
            print(f"timing evaluation of {name} at batch {batch} ...", file=sys.stderr)
            evaluation.append({"model": name, **measure_evaluation(loop.model, loop.cfg, bank, batch, seconds)})
    return evaluation


def _describe(base: Config, args, bank) -> str:
    """The benchmarked configuration in one line, for the report."""
    m = base.model
    return (f"{base.episodes.ways}-way, {base.episodes.instances} instances ({base.episodes.steps} steps), "
            f"batch {args.batch_size}, controller {m.controller_size}, "
            f"memory {m.memory_slots}x{m.memory_width}, "
            f"{m.num_read_heads} read heads, {base.data.image_size}x{base.data.image_size} images, "
            f"{'key strength, ' if m.key_strength else ''}{'Omniglot' if args.data_root else 'synthetic'} "
            f"bank of {bank.num_classes} classes")


def run_bench(args, command: list[str]) -> dict:
    """The whole benchmark, printed and returned (``--json``: also written). ``args``: the
    options of ``fewshot-mann bench`` (cli/bench.py), ``models`` and ``eval_batch_sizes``
    as lists."""
    models = args.models
    base = _config(args, "mann")
    bank = _load_bank(args, base)
    load_start = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    cpp_seconds, cpp_reason = _load_kernel(models)
    loops = {name: TrainingLoop(_loop_config(args, name), bank) for name in models}
    # The project's loops and evaluations run first, so the peak memory they need is
    # known before the reference (whose autograd graph is far larger) has run at all.
    evaluation = _time_evaluations(models, loops, bank, args.eval_batch_sizes, args.seconds / 2)
    backbones = []
    for encoder in getattr(args, "backbones", None) or []:
        print(f"timing feature extraction of {encoder} ...", file=sys.stderr)
        backbones.append(measure_backbone(encoder, args.backbone_weights, args.seconds / 2))
    for loop in loops.values():
        loop.step()
    peak_project = _peak_rss_mib()
    if not args.no_reference:
        loops = {"reference": _reference_loop(base, bank), **loops}
    print(f"timing training of {', '.join(loops)}: {args.seconds:g} s each in {args.rounds} interleaved rounds ...",
          file=sys.stderr)
    training = measure_training(loops, args.seconds, args.rounds)
    profiles = {name: profile_steps(loop, args.profile) for name, loop in loops.items()} if args.profile else None
    rss = None
    if args.rss_steps:
        print(f"running {args.rss_steps} MANN training steps for the memory trace ...", file=sys.stderr)
        rss = measure_rss(loops["mann"] if "mann" in loops else TrainingLoop(base, bank), args.rss_steps)
    res = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": _machine(), "load_start": load_start, "load_end": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
        "command": command, "config": _describe(base, args, bank),
        "compile_seconds": None,  # mann-compiled (torch.compile) was removed; the key stays for readers
        "cpp_load_seconds": cpp_seconds, "cpp_unavailable": cpp_reason,
        "training": training, "evaluation": evaluation, "backbones": backbones, "profiles": profiles, "rss": rss,
        "peak_rss_project_mib": peak_project, "peak_rss_mib": _peak_rss_mib(),
    }
    if "reference" in training and "mann" in training:
        res["speedup_wall"] = training["mann"]["episodes_per_s"] / training["reference"]["episodes_per_s"]
        res["speedup_cpu"] = training["mann"]["cpu_episodes_per_s"] / training["reference"]["cpu_episodes_per_s"]
    print(format_report(res))
    if args.json:
        from fewshot_mann.fileio import atomic_write_json
        atomic_write_json(args.json, res)
        print(f"wrote {args.json}")
    return res
