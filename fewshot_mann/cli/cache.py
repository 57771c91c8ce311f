"""``fewshot-mann cache list|clear``: the caches of decoded images and backbone features
(models/features.py). Only the caches' own files are listed or removed (data/cache_files.py:
exact names and contents, no link followed, abandoned temporary files included); downloaded
datasets and anything else under the cache folder are never touched."""
from __future__ import annotations

import argparse
import sys

from fewshot_mann.cli.common import parse_checked, run_guarded


def parser() -> argparse.ArgumentParser:
    from fewshot_mann.data.omniglot import cache_dir

    p = argparse.ArgumentParser(prog="fewshot-mann cache",
                                description="List or remove the caches (decoded images, backbone features) in "
                                            f"{cache_dir()}. Downloaded datasets under it are never touched.")
    p.add_argument("action", choices=("list", "clear"))
    p.add_argument("--features-only", action="store_true", help="clear: only the backbone feature caches")
    return p


def main(argv=None) -> int:
    return run_guarded(_cache, argv)


def _cache(argv) -> int:
    from fewshot_mann.models.features import cache_entries, clear_caches, describe_cache_file
    from fewshot_mann.data.omniglot import cache_dir

    args = parse_checked(parser(), argv)
    if args.action == "clear":
        removed = clear_caches(features_only=args.features_only)
        print(f"removed {removed} cache file(s) from {cache_dir()}")
        return 0
    rows = cache_entries()
    if not rows:
        print(f"no caches in {cache_dir()}")
        return 0
    for kind, path, size in rows:
        print(f"{kind:<9} {size / 2**20:8.1f} MB  {path}  {describe_cache_file(kind, path)}".rstrip())
    print(f"{len(rows)} file(s), {sum(r[2] for r in rows) / 2**20:.1f} MB in {cache_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
