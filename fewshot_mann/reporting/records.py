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


def write_evaluation(out: dict, json_path, plot_path, label: str) -> None:
    """Write an evaluation's JSON (``out``) and/or its accuracy-by-instance plot; say so."""
    if json_path:
        from fewshot_mann.fileio import atomic_write_json
        atomic_write_json(json_path, out)
        print(f"wrote {json_path}")
    if plot_path:
        plot_by_instance([(f"{label} ({out['episodes']} episodes, 95% CI)", out)], plot_path)
        print(f"wrote {plot_path}")
