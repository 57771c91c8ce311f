"""Every committed checkpoint (reports/checkpoints/*.pt, the bundled models) loads through the
format migrations, builds with strict weights, and computes what it computed when it was
committed: the logits of a fixed input, recorded before the checkpoint format's version 2
(``model.compile`` dropped, ``memory_backend`` added), under the default memory backend.

Only the default: the least-used slot is a discrete choice, so on a trained model and an
input it never saw, float rounding differences between implementations (autograd normalises
in another order) can pick another slot and change later steps; tests/memory/test_backends.py holds
every backend to the literal reference instead."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fewshot_mann.engine import checkpoint
from fewshot_mann.memory import backend

ROOT = Path(__file__).resolve().parents[2]
# backbone weights published beside the models that read their features (fewshot-mann pretrain)
BACKBONES = sorted({*ROOT.glob("reports/checkpoints/conv4-*.pt"), *ROOT.glob("fewshot_mann/assets/models/conv4-*.pt")})
CHECKPOINTS = sorted({*ROOT.glob("reports/checkpoints/*.pt"), *ROOT.glob("fewshot_mann/assets/models/*.pt")}
                     - set(BACKBONES))
# name -> (sum, sum of |.|, logits[0, -1, 0]) of the logits of fixed_input, measured at b2b607d.
RECORDED = {
    "omniglot-5way.pt": (-51.1861457824707, 481.4322509765625, -2.565218925476074),
    "dnc-onehot-5way.pt": (-19.768165588378906, 219.2030029296875, -1.7516018152236938),
    "ff-onehot-5way.pt": (6.555588722229004, 6.578506946563721, 0.034054335206747055),
    "lstm-onehot-5way.pt": (-32.64586639404297, 231.659912109375, 3.2369823455810547),
    "mann-onehot-5way-finetune2.pt": (-51.1861457824707, 481.4322509765625, -2.565218925476074),
    "keyed-conv-20way.pt": (4.5779709815979, 36.71916961669922, 0.270469605922699),  # l2 features, 2026-12-07
    "lake-20way-mann.pt": (-344.6864013671875, 510.6768798828125, -0.7929916381835938),  # l2 features, fine-tuned 2026-12-07
    "lake-20way.pt": (8.975946426391602, 41.45686340332031, 0.1285143792629242),  # l2 features, 2026-12-07
    "mann-conv-20way.pt": (-192.0391845703125, 490.8437805175781, 2.786496162414551),  # l2 features, fine-tuned 2026-12-07
    "mann-conv-5way.pt": (-11.137381553649902, 253.05674743652344, -0.18146491050720215),  # l2 features, fine-tuned 2026-12-07
    # --memory-input --write-vector --previous-image (issue 30), 2026-12-07
    "mann-conv-5way-memory-input.pt": (69.49298095703125, 292.1289978027344, -7.0095367431640625),
    # --memory-init features (issue 30), 2026-12-07, session 10
    "mann-conv-5way-nn.pt": (49.47578430175781, 399.5132751464844, 7.426743984222412),
    "mann-conv-20way-nn.pt": (-308.9107971191406, 807.836181640625, 7.7171549797058105),
    # the nn start over the 10,000-episode Conv4s, 0 meta-training episodes (2026-12-07, session 12): the same
    # memory weights at 20 ways (the santoro and lake models differ in their Conv4 only)
    "mann-conv10k-5way.pt": (148.3267059326172, 150.31288146972656, 5.127505779266357),
    "mann-conv10k-20way.pt": (142.28585815429688, 151.52700805664062, 5.146088600158691),
    "lake-20way-conv10k.pt": (142.28585815429688, 151.52700805664062, 5.146088600158691),
    # bundled: the keyed memory over conv4-pen.pt (issue 30, item 5), 2026-12-07
    "handwriting.pt": (-0.2122403383255005, 31.981245040893555, 0.3197224736213684),
    "mann-onehot-5way.pt": (-62.61835479736328, 428.9587097167969, -0.8287232518196106),
    "mann-string-15way-384slots.pt": (49.78346633911133, 745.6824340820312, -0.3914867639541626),
    # float64: this model's float32 answer to the fixed input moves by 7 % with the CPU (rounding amplified over
    # the steps; recorded on AMD as -182.4 / 3128.4 / 15.12, on Intel -187.8 / 3389.2 / 15.12)
    "mann-string-5way-from-onehot.pt": (-189.7269346994638, 3179.7967479230956, 14.031180096585153),
    "ntm-onehot-5way.pt": (-29.934389114379883, 339.6459045410156, 2.1034793853759766),
    "photos.pt": (971.8358450834943, 977.2943099251141, 0.17082881443105258),  # read power 0.1, unseen 6.0 (session 13)
    "photos-5way.pt": (-49.191810607910156, 50.72223663330078, -0.28129881620407104),  # causal centring, 2026-12-06
    "photos-clothing-indomain.pt": (-48.663299560546875, 51.06067657470703, -0.23337896168231964),  # causal centring, 2026-12-06
    "transformer-onehot-5way.pt": (-33.6633415222168, 140.39047241210938, 0.22408075630664825),
}


def fixed_input(cfg):
    """Two episodes of at most 20 steps: images (or backbone features) from seed 0, label 0 after step 0."""
    g = torch.Generator().manual_seed(0)
    steps = min(cfg.episodes.steps, 20)
    if cfg.model.encoder.startswith(("timm:", "torchvision:", "fewshot:")):
        x = torch.randn(2, steps, cfg.model.feature_dim, generator=g)
    else:
        x = torch.rand(2, steps, cfg.data.channels, cfg.data.image_size, cfg.data.image_size, generator=g)
    y = torch.zeros(2, steps, cfg.episodes.label_size)
    y[:, 1:, 0] = 1.0
    return x, y


@pytest.mark.parametrize("path", BACKBONES, ids=[p.name for p in BACKBONES])
def test_committed_backbone_weights_load_weights_only_into_their_network(path):
    from fewshot_mann.models.conv4 import Conv4

    saved = torch.load(path, map_location="cpu", weights_only=True)
    net = Conv4()
    net.load_state_dict(saved["state_dict"])  # strict
    assert saved["best"]["accuracy"] == pytest.approx(max(c["validation_accuracy"] for c in saved["checks"]), abs=1e-5)


def summary(logits: torch.Tensor) -> tuple[float, float, float]:
    return float(logits.sum()), float(logits.abs().sum()), float(logits[0, -1, 0])


def test_every_committed_checkpoint_is_recorded():
    assert sorted(p.name for p in CHECKPOINTS) == sorted(RECORDED)


@pytest.mark.parametrize("path", CHECKPOINTS, ids=[p.name for p in CHECKPOINTS])
def test_committed_checkpoint_loads_and_computes_what_it_did(path, monkeypatch):
    monkeypatch.delenv(backend.ENV, raising=False)
    ckpt = checkpoint.load_checkpoint(path)
    assert ckpt["version"] == checkpoint.VERSION
    assert "compile" not in ckpt["config"]["model"]
    model = checkpoint.load_model_from_checkpoint(ckpt).eval()  # load_state_dict is strict
    cfg = ckpt["config_obj"]
    x, y = fixed_input(cfg)
    assert getattr(model, "memory_backend", "auto") == "auto"
    with torch.no_grad():  # in float64: the same on every CPU (the values recorded in float32 agree within 2e-5)
        got = summary(model.double()(x.double(), y.double()))
    for value, recorded in zip(got, RECORDED[path.name]):
        assert value == pytest.approx(recorded, rel=1e-4, abs=1e-3), f"{got} != {RECORDED[path.name]}"
