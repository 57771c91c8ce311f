"""MANN's LRUA recurrence as a C++ kernel (``lrua.cpp``): the ``kernel`` implementation
of ``memory.backend``, which ``auto`` picks on CPU.

``cpp_lrua_sequence`` has ``sequence.lrua_sequence``'s signature and results (to float
rounding; tests/memory/test_cpp.py holds outputs and every gradient to 1e-5 in float32 against
sequence.py and ``reference.py``). The forward loop over time and the hand-written
backpropagation through time are one C++ call each, with sequence.py's formulas, layout and
segment recomputation; the matmuls go to BLAS and the rest are plain loops over
contiguous buffers, so the per-op dispatch that dominates sequence.py at small batches is gone.

- built on first use with ``torch.utils.cpp_extension.load`` (g++ and ninja; 20-30 s
  on a busy 2-core machine) into torch's extension directory
  (``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``); later processes
  load the built library directly (well under a second). The library's name carries a
  hash of the source, the compiler flags, torch's version and the CPU, so a change of
  any of them builds afresh instead of loading a stale or foreign build.
- ``FEWSHOT_MANN_CPP=0`` makes ``memory.backend``'s ``auto`` skip it (sequence.py runs, no
  build, no warning). Where it cannot be built or loaded (no compiler, no ninja, a failed
  build) one ``RuntimeWarning`` says why and sequence.py runs instead.
- CPU, float32 and float64 only; other devices and dtypes go to sequence.py (GPU keeps its
  path). Training and evaluation (no gradient) both use it.
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

from fewshot_mann.memory.lrua import sequence
from fewshot_mann.memory.base import COSINE_EPS, MEMORY_INIT

SOURCE = Path(__file__).resolve().parent / "lrua.cpp"
CFLAGS = ["-O3", "-march=native", "-fopenmp"]
LDFLAGS = ["-fopenmp"]
SEGMENT = 5  # steps per recomputed memory segment in backward (as sequence.SEGMENT)
DTYPES = (torch.float32, torch.float64)

_STATE: dict = {}  # "ops" once loaded, or "reason" why not; "build_seconds" when this process built it


def _cpu_tag() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def library_name() -> str:
    """The extension's name: a hash of everything that makes its binary."""
    digest = hashlib.sha1()
    for part in (SOURCE.read_bytes(), " ".join(CFLAGS + LDFLAGS).encode(), torch.__version__.encode(),
                 _cpu_tag().encode(), sys.version.encode()):
        digest.update(part)
    return f"fewshot_mann_lrua_{digest.hexdigest()[:12]}"


def build_directory(name: str) -> Path:
    """Where torch.utils.cpp_extension builds ``name`` (the same rule as torch's)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if not root:
        cuda = "cpu" if torch.version.cuda is None else "cu" + torch.version.cuda.replace(".", "")
        root = os.path.join(os.path.expanduser("~"), ".cache", "torch_extensions",
                            f"py{sys.version_info.major}{sys.version_info.minor}_{cuda}")
    return Path(root) / name


def _build_and_load():
    name = library_name()
    directory = build_directory(name)
    built = directory / f"{name}.so"
    if built.exists():
        try:
            torch.ops.load_library(str(built))
            return torch.ops.fewshot_mann_lrua
        except (OSError, RuntimeError):
            pass  # a broken or partial build: build it again
    print(f"building the C++ LRUA kernel (once; cached in {directory}) ...", file=sys.stderr, flush=True)
    wall0 = time.perf_counter()
    # torch logs a CUDA notice on importing cpp_extension on machines without CUDA; not ours to show.
    quiet = logging.getLogger("torch.utils.cpp_extension")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        quiet.setLevel(level)
    directory.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(name=name, sources=[str(SOURCE)], extra_cflags=CFLAGS, extra_ldflags=LDFLAGS,
                       build_directory=str(directory), is_python_module=False, verbose=False)
    _STATE["build_seconds"] = time.perf_counter() - wall0
    print(f"built the C++ LRUA kernel in {_STATE['build_seconds']:.0f} s", file=sys.stderr, flush=True)
    return torch.ops.fewshot_mann_lrua


def ops():
    """The loaded kernel (``torch.ops.fewshot_mann_lrua``), or None; builds it on first use.
    A failure is remembered (and warned about once) for the rest of the process."""
    if "ops" in _STATE:
        return _STATE["ops"]
    if "reason" in _STATE:
        return None
    try:
        _STATE["ops"] = _build_and_load()
        return _STATE["ops"]
    except Exception as exc:  # noqa: BLE001 - no compiler, no ninja, a failed build: sequence.py is the same maths
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        # The compiler's first "error:" line says most; else the first line.
        errors = [ln for ln in lines if "error:" in ln.lower()]
        message = ((errors or lines)[0] if lines else "")[:200]
        _STATE["reason"] = f"{type(exc).__name__}: {message}"
        warnings.warn(f"the C++ LRUA kernel could not be built or loaded ({_STATE['reason']}); MANN runs on the "
                      "Python fast path (sequence.py) instead. Set FEWSHOT_MANN_CPP=0 (or --memory-backend sequence) "
                      "to skip trying.", RuntimeWarning, stacklevel=2)
        return None


def unavailable_reason() -> str | None:
    """Why the kernel cannot be built or loaded here (after trying), or None when it can."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = ops()
    return None if loaded is not None else _STATE["reason"]


def usable(x: torch.Tensor) -> bool:
    """True when the kernel handles x's device and dtype and is loaded (building it on first use)."""
    return x.device.type == "cpu" and x.dtype in DTYPES and ops() is not None


class _CppSequence(torch.autograd.Function):
    """Forward and backward as one C++ call each; saved tensors are only read, so
    ``retain_graph=True`` works."""

    @staticmethod
    def forward(ctx, gates_in, w_rec, w_ctrl, b_ctrl, slots, heads, decay, strength):
        w_rec_c, w_ctrl_c = w_rec.contiguous(), w_ctrl.contiguous()
        saved = _STATE["ops"].forward(gates_in.contiguous(), w_rec_c, w_ctrl_c, b_ctrl.contiguous(), slots, heads,
                                      decay, strength, True, SEGMENT, COSINE_EPS, MEMORY_INIT)
        ctx.saved, ctx.options = saved, (slots, heads, strength)
        ctx.save_for_backward(w_rec_c, w_ctrl_c)
        return saved[0][1:]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        w_rec, w_ctrl = ctx.saved_tensors
        slots, heads, strength = ctx.options
        d_pre, d_w_rec, d_w_ctrl, d_b_ctrl = _STATE["ops"].backward(
            grad_out.contiguous(), w_rec, w_ctrl, ctx.saved, slots, heads, strength, SEGMENT, COSINE_EPS)
        return d_pre, d_w_rec, d_w_ctrl, d_b_ctrl, None, None, None, None


def cpp_lrua_sequence(gates_in: torch.Tensor, recurrent_weight: torch.Tensor, control_weight: torch.Tensor,
                      control_bias: torch.Tensor, *, memory_slots: int, num_read_heads: int,
                      usage_decay: float, key_strength: bool) -> torch.Tensor:
    """``sequence.lrua_sequence`` through the C++ kernel: same arguments, same result to float
    rounding. Where the kernel is unavailable, or not for this device or dtype, it is
    ``sequence.lrua_sequence`` itself."""
    tensors = (gates_in, recurrent_weight, control_weight, control_bias)
    if not usable(gates_in) or any(x.dtype != gates_in.dtype or x.device != gates_in.device for x in tensors):
        return sequence.lrua_sequence(gates_in, recurrent_weight, control_weight, control_bias, memory_slots=memory_slots,
                                  num_read_heads=num_read_heads, usage_decay=usage_decay, key_strength=key_strength)
    if torch.is_grad_enabled() and any(x.requires_grad for x in tensors):
        return _CppSequence.apply(gates_in, recurrent_weight, control_weight, control_bias,
                                  int(memory_slots), int(num_read_heads), float(usage_decay), bool(key_strength))
    with torch.no_grad():
        hr = _STATE["ops"].forward(gates_in.contiguous(), recurrent_weight.contiguous(), control_weight.contiguous(),
                                   control_bias.contiguous(), int(memory_slots), int(num_read_heads),
                                   float(usage_decay), bool(key_strength), False, SEGMENT, COSINE_EPS, MEMORY_INIT)[0]
    return hr[1:]
