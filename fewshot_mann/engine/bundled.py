"""Models shipped inside the package, by name: ``--checkpoint omniglot-5way``.

``fewshot_mann/assets/models/models.json`` lists each bundled model (file, sha256, what it was
trained on, its measured accuracy and the commands behind both); ``fewshot-mann models``
prints that list. Every command that takes a checkpoint resolves it with
``resolve_checkpoint``: an existing path always wins over a name.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from fewshot_mann.errors import CheckpointError

MODELS_DIR = Path(__file__).resolve().parents[1] / "assets" / "models"
REGISTRY = MODELS_DIR / "models.json"


def registry() -> dict[str, dict]:
    """name -> entry (``file``, ``sha256``, ``trained_on``, ``accuracy``, ...); {} if none ship."""
    try:
        entries = json.loads(REGISTRY.read_text())
    except (OSError, ValueError):
        return {}
    return {e["name"]: e for e in entries if isinstance(e, dict) and isinstance(e.get("name"), str)}


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """The file to load: the path itself when it exists (or looks like a path), else a bundled model."""
    path = Path(name_or_path)
    if path.exists() or str(name_or_path) not in registry():
        return path
    entry = registry()[str(name_or_path)]
    file = MODELS_DIR / entry["file"]
    if not file.is_file():
        raise CheckpointError(f"bundled model {name_or_path!r} is missing from this installation ({file}); "
                              "reinstall fewshot-mann")
    return file


def names_hint() -> str:
    names = sorted(registry())
    return f" (bundled models: {', '.join(names)}; `fewshot-mann models` lists them)" if names else ""


def verify(name: str) -> bool:
    """Whether the bundled file's sha256 is the one its registry entry records."""
    entry = registry()[name]
    digest = hashlib.sha256((MODELS_DIR / entry["file"]).read_bytes()).hexdigest()
    return digest == entry["sha256"]


def format_models() -> str:
    lines = []
    for name, e in sorted(registry().items()):
        acc = e.get("accuracy", {})
        lines.append(f"{name}")
        lines.append(f"  {e.get('description', '')}")
        lines.append(f"  trained on: {e.get('trained_on', '?')}")
        for what, value in acc.items():
            lines.append(f"  {what}: {value}")
        if e.get("selection"):
            lines.append(f"  selection: {e['selection']}")
        size = (MODELS_DIR / e["file"]).stat().st_size
        shown = f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.0f} kB"  # photos.pt: a few kB
        lines.append(f"  file: {MODELS_DIR / e['file']} ({shown}, sha256 {e['sha256'][:16]}...)")
    return "\n".join(lines) if lines else "no models are bundled with this installation"
