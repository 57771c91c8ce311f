"""``fewshot-mann pretrain``: a backbone pretrained on the training classes (prototypical loss).

    fewshot-mann pretrain --out conv4.pt                      # Conv4 on the santoro training classes
    fewshot-mann train --encoder fewshot:conv4 --encoder-weights conv4.pt --out runs/conv-mann
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from fewshot_mann.cli.common import add_shared_flags, parse_checked, run_guarded, set_threads
from fewshot_mann.engine.pretrain import PretrainConfig, pretrain
from fewshot_mann.fileio import check_output_path


def parser() -> argparse.ArgumentParser:
    d = PretrainConfig()
    p = argparse.ArgumentParser(prog="fewshot-mann pretrain", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="the weights file to write (.pt), read by --encoder-weights")
    p.add_argument("--encoder", default=d.encoder, help="the backbone to train (fewshot:conv4)")
    p.add_argument("--dataset", default=d.dataset, choices=("omniglot", "folder"))
    p.add_argument("--data-root", default=d.data_root, help="Omniglot zips or an image folder (one sub-folder per class)")
    p.add_argument("--class-split", dest="split", default=d.split, help="Omniglot class split: santoro, lake or a .json")
    p.add_argument("--validation-classes", default=d.validation_classes, help="folder datasets: fraction or list")
    p.add_argument("--rotations", action=argparse.BooleanOptionalAction, default=d.rotations,
                   help="training classes x4 by 90/180/270 degree rotations")
    for name in ("ways", "shots", "queries", "episodes", "lr_halve_every", "check_every", "check_trials", "check_shots"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name))
    p.add_argument("--lr", type=float, default=d.lr)
    add_shared_flags(p, "device", "threads", "seed")
    p.add_argument("--no-progress", action="store_true")
    return p


def _main(argv) -> int:
    args = parse_checked(parser(), argv)
    check_output_path(args.out, "--out", (".pt",))
    set_threads(args.threads)
    from fewshot_mann.engine.trainer import resolve_device

    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    p = PretrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    best = pretrain(p, args.out, device=resolve_device(args.device), progress=not args.no_progress)
    print(f"wrote {args.out}: best validation {100 * best['accuracy']:.2f}% (5-way {p.check_shots}-shot) "
          f"at episode {best['episode']}")
    return 0


def main(argv=None) -> int:
    return run_guarded(_main, sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    sys.exit(main())
