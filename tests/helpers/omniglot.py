"""A fake Omniglot in the official layout (data/test_omniglot.py, engine/test_reliability.py,
engine/test_hostile_inputs.py), and the 105x105 one-bit PNGs it is made of."""
from __future__ import annotations

import io
import zipfile

import numpy as np
from PIL import Image


def omniglot_png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((105, 105), value, np.uint8)).convert("1").save(buf, "PNG")
    return buf.getvalue()


def make_fake_omniglot(root, as_zip: bool, prefix=""):
    """A 2-alphabet, 3-character miniature in the official layout."""
    for part in ("background", "evaluation"):
        members = {}
        for a in range(2):
            for c in range(3 if part == "background" else 2):
                for d in range(20):
                    members[f"images_{part}/Alpha{a}/character{c + 1:02d}/{a}{c}_{d:02d}.png"] = omniglot_png(255 * (d % 2))
        if as_zip:
            with zipfile.ZipFile(root / f"{prefix}images_{part}.zip", "w") as z:
                for name, data in members.items():
                    z.writestr(name, data)
                z.writestr("../evil.png", omniglot_png(0))  # never read: parent-relative member
        else:
            for name, data in members.items():
                path = root / prefix / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
