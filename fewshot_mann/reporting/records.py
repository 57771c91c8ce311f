"""What an evaluation writes: the JSON record of the checkpoint's training, the JSON, its plot."""
from __future__ import annotations

from fewshot_mann.reporting.plots import plot_by_instance


def training_record(ckpt: dict | None) -> dict | None:
    """What an evaluation JSON records about the checkpoint's training run."""
    if ckpt is None:
        return None
    record = {"episodes": ckpt.get("episodes_done"), "command": ckpt.get("command"),
              "train_seconds": (ckpt.get("state") or {}).get("train_seconds")}
    origin = ckpt.get("init_from")
    if isinstance(origin, dict):  # weights that started from another run (--init-from)
        record["init_from"] = origin
        if isinstance(record["episodes"], int) and isinstance(origin.get("episodes"), int):
            record["episodes_including_init"] = record["episodes"] + origin["episodes"]
    return record


PACKAGES = ("torch", "torchvision", "timm", "numpy", "PIL", "sklearn")


def environment() -> dict:
    """What made a number, so that it can be reproduced: python and package versions, the machine."""
    import importlib
    import os
    import platform

    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = str(getattr(importlib.import_module(name), "__version__", "?"))
        except ImportError:
            versions[name] = None
    try:
        import torch
        threads = torch.get_num_threads()
    except ImportError:
        threads = None
    return {"versions": versions, "machine": {"platform": platform.platform(), "processor": platform.machine(),
                                              "cpus": os.cpu_count(), "torch_threads": threads}}


def write_evaluation(out: dict, json_path, plot_path, label: str) -> None:
    """Write an evaluation's JSON (``out``, plus ``environment()``) and/or its accuracy-by-instance plot; say so."""
    if json_path:
        from fewshot_mann.fileio import atomic_write_json
        atomic_write_json(json_path, {**out, "environment": environment()})
        print(f"wrote {json_path}")
    if plot_path and (out.get("config") or {}).get("data", {}).get("dataset", "omniglot") != "omniglot":
        from fewshot_mann.reporting.trust_plots import plot_by_instance_folder
        plot_by_instance_folder(out, plot_path, label)  # the paper's Omniglot curves are another task
        print(f"wrote {plot_path}")
    elif plot_path:
        plot_by_instance([(f"{label} ({out['episodes']} episodes, 95% CI)", out)], plot_path,
                         baselines=out.get("baselines", []), chance=1 / out["ways"] if out.get("ways") else None)
        print(f"wrote {plot_path}")
