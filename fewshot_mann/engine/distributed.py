"""Several processes (``torchrun``) train one model with the mathematics of one process.

``torchrun`` sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; a process without ``WORLD_SIZE`` runs alone and never touches
``torch.distributed``. The backend is NCCL on CUDA (one GPU per process, ``cuda:LOCAL_RANK``)
and Gloo on CPU.

Same mathematics at any world size P:

- the global batch of step s is ``batch_rng(seed, s)`` on every rank (B episodes); rank r
  trains on episodes ``shard(B, r, P)`` of it;
- each rank's loss is its share of the global mean (its mean loss x its episodes / B), and the
  gradients are *summed* over ranks, so the summed gradient is the one-process gradient of the
  whole batch (up to float summation order);
- clipping, the non-finite check and Adam then run on identical gradients on every rank, so
  the weights stay identical without broadcasting them;
- evaluation episodes are sharded the same way and the per-episode accuracies gathered in
  episode order, so the reported numbers are those of one process.

One flat all-reduce per step carries all gradients (no DistributedDataParallel: these models
are small, and a flat sum needs no ``module.`` prefixes and tolerates parameters that a
model leaves unused). A second, float64 one carries the loss, accuracy sums and the stop
flag, so every rank stops at the same step after SIGINT/SIGTERM reaches any of them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields

import numpy as np
import torch

from fewshot_mann.errors import CheckpointError, DataError, UserError


@dataclass
class Context:
    """Where this process stands: ``rank`` of ``world`` processes (``enabled``: under torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    enabled: bool = False
    owns_group: bool = False  # this module started the process group and must end it

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, logs, the progress bar and reports."""
        return self.rank == 0


def _env_int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise UserError(f"WORLD_SIZE is set but {name} is not; start several processes with torchrun")
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} is not an integer") from None


def init_from_env(device: torch.device) -> tuple[Context, torch.device]:
    """Join the process group torchrun describes; returns the context and this rank's device.

    Without ``WORLD_SIZE`` in the environment: a single process, ``device`` unchanged.
    """
    if "WORLD_SIZE" not in os.environ:
        return Context(), device
    import torch.distributed as dist

    if not dist.is_available():
        raise UserError("WORLD_SIZE is set (torchrun?) but this PyTorch build has no torch.distributed")
    world, rank = _env_int("WORLD_SIZE"), _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"invalid torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise UserError(f"process LOCAL_RANK={local_rank} needs its own GPU but only {count} are visible; "
                            f"use --nproc_per_node {count} or fewer")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, rank=rank, world_size=world, **kwargs)
        owns = True
    return Context(rank, world, local_rank, True, owns), device


def close(ctx: Context) -> None:
    """End the process group this module started, while the interpreter is fully alive.

    ``destroy_process_group`` drops the group from torch's registry, but the C++ group (and
    its Gloo worker threads) goes only with the last reference to it; one held by a finished
    ``Work`` or a reference cycle would leave that to interpreter shutdown, where a joinable
    ``std::thread`` aborts the process ("terminate called without an active exception").
    Collecting garbage here ends it now. This is the likely cause of issue 21's rare abort,
    not a proven one: measure with ``scripts/stress_torchrun.py``."""
    if ctx.owns_group:
        import gc

        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()
        gc.collect()


def shard(n: int, rank: int, world: int) -> tuple[int, int]:
    """Items [start, stop) of n that rank takes; contiguous, in rank order, rank 0 never empty."""
    return -(-n * rank // world), -(-n * (rank + 1) // world)


def shard_batch(batch, start: int, stop: int):
    """The same dataclass (Episodes or TensorBatch) holding only items start..stop-1."""
    return type(batch)(*(getattr(batch, f.name)[start:stop] for f in fields(batch)))


def barrier(ctx: Context) -> None:
    if ctx.enabled:
        import torch.distributed as dist
        dist.barrier()


_ERRORS = {cls.__name__: cls for cls in (UserError, CheckpointError, DataError)}


def on_main(ctx: Context, fn):
    """Run ``fn()`` on rank 0 only and hand its result (or its user error) to every rank.

    For decisions about the run directory: the other ranks must not look at files that
    rank 0 is about to change.
    """
    if not ctx.enabled:
        return fn()
    import torch.distributed as dist

    box = [None]
    if ctx.is_main:
        try:
            box[0] = ("ok", fn())
        except UserError as exc:
            box[0] = (type(exc).__name__, str(exc))
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind != "ok":
        raise _ERRORS.get(kind, UserError)(value)
    return value


def sum_gradients(params, ctx: Context) -> None:
    """Replace every gradient by its sum over ranks (one flat all-reduce)."""
    if not ctx.enabled:
        return
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def sum_values(values: list[float], ctx: Context, device) -> list[float]:
    """Element-wise sum over ranks of a short list of numbers (float64)."""
    if not ctx.enabled:
        return list(values)
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.cpu().tolist()


def evaluate_sharded(model, bank, cfg, ctx: Context, *, episodes: int, seed: int, device,
                     batch_size: int = 250, progress: bool = False, decode: str = "free") -> dict:
    """``evaluation.evaluate`` with the episodes split over ranks; every rank gets the numbers
    one process would have computed (per-episode results gathered in episode order)."""
    from fewshot_mann.engine.evaluation import evaluate, summarise

    if not ctx.enabled:
        return evaluate(model, bank, cfg, episodes=episodes, seed=seed, batch_size=batch_size,
                        device=device, progress=progress, decode=decode)
    import torch.distributed as dist

    start, stop = shard(episodes, ctx.rank, ctx.world)
    local = None
    if stop > start:
        local = evaluate(model, bank, cfg, episodes=stop - start, seed=seed, batch_size=batch_size,
                         device=device, progress=progress and ctx.is_main, start=start, decode=decode)
    parts = [None] * ctx.world
    dist.all_gather_object(parts, local)
    present = [p for p in parts if p is not None]
    acc = np.concatenate([p["_per_episode"] for p in present], axis=0)
    mean, ci = summarise(acc)
    return {**present[0], "accuracy_by_instance": mean, "ci95": ci, "accuracy": float(acc.mean()),
            "episodes": int(episodes), "_per_episode": acc}
