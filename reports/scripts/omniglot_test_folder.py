"""The 423 held-out characters of the santoro split as their original 105 x 105 PNG files (dark ink on
white), one folder per character named ALPHABET__CHARACTER: Omniglot as a user's folder would hold it.

    python reports/scripts/omniglot_test_folder.py OMNIGLOT_DIR OUT_DIR

OMNIGLOT_DIR holds images_background.zip and images_evaluation.zip (e.g. ../shared/datasets/omniglot).
"""
import json
import sys
import zipfile
from pathlib import Path

root, out = Path(sys.argv[1]), Path(sys.argv[2])
split = json.loads((Path(__file__).resolve().parents[2] / "fewshot_mann" / "data" / "splits" / "omniglot_santoro.json").read_text())
written = 0
for part in ("background", "evaluation"):
    wanted = {tuple(c.split("/")[1:]) for c in split["test"] if c.startswith(part + "/")}
    with zipfile.ZipFile(root / f"images_{part}.zip") as z:
        for name in sorted(z.namelist()):
            bits = name.split("/")  # images_PART/ALPHABET/CHARACTER/FILE.png
            if len(bits) == 4 and bits[3].endswith(".png") and (bits[1], bits[2]) in wanted:
                folder = out / f"{bits[1]}__{bits[2]}"
                folder.mkdir(parents=True, exist_ok=True)
                (folder / bits[3]).write_bytes(z.read(name))
                written += 1
print(f"wrote {written} images of {len(split['test'])} characters to {out}")
