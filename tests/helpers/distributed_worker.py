"""Run several train/evaluate command lines in one torchrun launch (tests/engine/test_distributed.py).

usage: torchrun --nproc_per_node P tests/helpers/distributed_worker.py train ARGS... ++ evaluate ARGS... ++ ...

The process group is joined once through ``fewshot_mann.engine.distributed`` and kept across the
command lines, which then run exactly as ``train.py`` / ``evaluate.py`` would under torchrun.
"""
import sys

import torch

from fewshot_mann.cli.train import main as train_main
from fewshot_mann.cli.evaluate import main as evaluate_main

from fewshot_mann.engine import distributed

if __name__ == "__main__":
    ctx, _ = distributed.init_from_env(torch.device("cpu"))
    commands, current = [], []
    for arg in sys.argv[1:]:
        if arg == "++":
            commands.append(current)
            current = []
        else:
            current.append(arg)
    commands.append(current)
    status = 0
    for name, *argv in commands:
        status = {"train": train_main, "evaluate": evaluate_main}[name](argv)
        if status:
            break
    distributed.close(ctx)
    sys.exit(status)
