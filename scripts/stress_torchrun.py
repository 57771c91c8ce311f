#!/usr/bin/env python
"""Loop a two-process CPU ``torchrun`` training N times and count the runs that fail.

Issue 21, cause 9: once in 16 runs rank 1 aborted *after* training ("terminate called without
an active exception", SIGABRT), so torchrun reported a run that succeeded as failed. This
script measures how often that happens:

    python scripts/stress_torchrun.py --runs 30                        # synthetic image folder
    python scripts/stress_torchrun.py --runs 30 --data-root OMNIGLOT   # the issue's command

Each run trains into a fresh folder; a run counts as failed if torchrun exits non-zero, if
any output line says "terminate called", or if the checkpoint is missing. Prints one line per
run and a summary; exits 1 if any run failed.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--data-root", default=None, help="Omniglot root (default: a synthetic image folder)")
    p.add_argument("--episodes", type=int, default=320)
    p.add_argument("--timeout", type=float, default=600, help="seconds per run")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="stress-torchrun-"))
    if args.data_root:
        data = ["--data-root", args.data_root]
    else:
        sys.path.insert(0, str(REPO / "tests"))
        from helpers.images import make_image_folder
        root = make_image_folder(work / "data", classes=12, per_class=10, size_range=(12, 20))["root"]
        data = ["--dataset", "folder", "--data-root", str(root), "--image-size", "8", "--test-classes", "0.3",
                "--no-rotations", "--ways", "3", "--instances", "5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    failures = 0
    for i in range(args.runs):
        out = work / f"run{i}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "train.py"), *data, "--episodes", str(args.episodes), "--batch-size", "16",
               "--eval-every", "0", "--seed", "3", "--device", "cpu", "--threads", "1", "--no-progress",
               "--out", str(out)]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=args.timeout)
            code, text = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            code, text = "timeout", f"{exc.stdout or ''}{exc.stderr or ''}"
        ok = code == 0 and "terminate called" not in text and (out / "checkpoint.pt").exists()
        failures += not ok
        print(f"run {i + 1}/{args.runs}: {'ok' if ok else 'FAILED'} (exit {code}, {time.perf_counter() - t0:.0f} s)",
              flush=True)
        if not ok:
            print("  " + "\n  ".join(text.strip().splitlines()[-8:]), flush=True)
    print(f"{failures} of {args.runs} runs failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
