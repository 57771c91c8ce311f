"""Rebuild the embedded 20 x 20 Omniglot (``fewshot_mann/assets/omniglot-20px.*``) from the zips.

    python data/prepare_omniglot.py --data-root DIR [--out fewshot_mann/assets]

DIR holds ``images_background.zip`` and ``images_evaluation.zip``. Each zip's md5 is checked
against the official archive's (github.com/brendenlake/omniglot, python/). A re-packed copy of
the same images (other zip md5s) is accepted only when every PNG's md5 matches a list in the
format of ``md5sum`` output (``--png-md5s``, default ``DIR/PNG_MD5SUMS.txt``). The images are
decoded exactly as ``fewshot_mann.data.omniglot.load_omniglot`` decodes them at 20 px, then written
with ``fewshot_mann.data.embedded.write_embedded``; the script prints whether the array's sha256
equals the one committed before.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import zipfile
from pathlib import Path

import numpy as np

from fewshot_mann.data.bank import ClassBank
from fewshot_mann.data.embedded import ASSETS, META, write_embedded
from fewshot_mann.data.omniglot import decode_png, find_sources

OFFICIAL_MD5 = {
    "images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811",
}


def md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_zips(root: Path, png_md5s: Path | None) -> tuple[str, dict]:
    """'official' or 'png-md5s' (how the images were verified) and each zip's md5."""
    sums = {name: md5_file(root / name) for name in OFFICIAL_MD5}
    if all(sums[n] == OFFICIAL_MD5[n] for n in OFFICIAL_MD5):
        return "official zip md5s", sums
    if png_md5s is None or not png_md5s.is_file():
        sys.exit(f"error: the zips in {root} are not the official archives (md5 {sums}) and no PNG md5 list "
                 "was found to verify their images (--png-md5s)")
    expected = {}
    for line in png_md5s.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        expected[name.removeprefix("./")] = digest
    seen = 0
    for zname in OFFICIAL_MD5:
        with zipfile.ZipFile(root / zname) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".png"):
                    continue
                if hashlib.md5(zf.read(info)).hexdigest() != expected.get(info.filename):
                    sys.exit(f"error: {zname}:{info.filename} does not match {png_md5s}")
                seen += 1
    if seen != len(expected):
        sys.exit(f"error: the zips hold {seen} PNGs, {png_md5s} lists {len(expected)}")
    return f"re-packed zips, all {seen} PNG md5s checked against {png_md5s.name}", sums


def decode_all(root: Path) -> ClassBank:
    groups, names = [], []
    for source in find_sources(root):
        for name, files in source.members().items():
            groups.append(np.stack([decode_png(source.read(h), 20, f"{source.path}:{fn}") for fn, h in files])[:, None])
            names.append(name)
    return ClassBank.from_groups(groups, names)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True, type=Path, help="folder with images_background.zip, images_evaluation.zip")
    p.add_argument("--png-md5s", type=Path, default=None, help="md5sum-style list of every PNG (for re-packed zips)")
    p.add_argument("--out", type=Path, default=ASSETS, help="where to write omniglot-20px.npy.xz and .json")
    args = p.parse_args(argv)
    before = json.loads(META.read_text())["sha256_npy"] if META.is_file() else None
    how, sums = check_zips(args.data_root, args.png_md5s or args.data_root / "PNG_MD5SUMS.txt")
    bank = decode_all(args.data_root)
    meta = write_embedded(bank, {"verified": how, "zip_md5": sums, "made_by": "python data/prepare_omniglot.py"}, args.out)
    same = "equals" if meta["sha256_npy"] == before else "differs from"
    print(f"wrote {len(bank.names)} characters, {len(bank.images)} images to {args.out} ({how}); "
          f"array sha256 {meta['sha256_npy'][:16]}... {same} the committed one")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
