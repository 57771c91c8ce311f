"""``--encoder conv4``: the few-shot Conv4 trained with the memory (issue 30, item 1). It starts where a model
meta-trained over the frozen Conv4's cached features was: the same normalised features, the same logits."""
from __future__ import annotations

import pytest
import torch

from fewshot_mann.cli import main as cli
from fewshot_mann.engine.transfer import transfer_weights
from fewshot_mann.models.backbones import load_trainable_encoder
from fewshot_mann.models.conv4 import Conv4
from fewshot_mann.models.registry import build_model
from helpers import patch_banks, one_error_line, synthetic_bank, tiny_config


@pytest.fixture
def conv4_file(tmp_path):
    torch.manual_seed(3)
    net = Conv4()
    with torch.no_grad():  # running statistics other than the defaults, so evaluation mode matters
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "conv4.pt"
    torch.save(net.state_dict(), path)
    return path, net.eval()


def test_conv4_mann_starts_with_the_logits_of_the_mann_over_its_frozen_features(conv4_file):
    path, net = conv4_file
    features_cfg = tiny_config(encoder="fewshot:conv4", encoder_weights=str(path), feature_dim=64, feature_norm="l2")
    torch.manual_seed(0)
    over_features = build_model(features_cfg).eval()
    cfg = tiny_config(encoder="conv4", encoder_weights=str(path), feature_norm="l2")
    cfg.data.image_size = 16
    model = build_model(cfg)
    assert "initial weights from" in load_trainable_encoder(model, cfg)
    lines = transfer_weights(model, cfg, over_features.state_dict(), features_cfg)
    assert "kept from --encoder-weights" in lines[0] and "re-initialised" not in lines[0], lines
    model.eval()
    images = torch.rand(2, cfg.episodes.steps, 1, 16, 16)
    labels = torch.rand(2, cfg.episodes.steps, cfg.episodes.label_size)
    with torch.no_grad():
        feats = net(images.flatten(0, 1)).view(2, cfg.episodes.steps, -1)
        assert torch.allclose(model(images, labels), over_features(feats, labels), atol=1e-5)
    # trained with the memory: the encoder's weights get gradients
    model.train()
    model(images, labels).logsumexp(-1).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.backbone.parameters())


def test_train_conv4_from_a_weights_file_then_kshot(monkeypatch, tmp_path, conv4_file, capsys):
    path, net = conv4_file
    patch_banks(monkeypatch, (synthetic_bank(classes=10, size=16, seed=1), synthetic_bank(classes=6, size=16, seed=2)))
    out = tmp_path / "run"
    flags = ["--episodes", "8", "--image-size", "16", "--controller-size", "16", "--memory-slots", "10",
             "--memory-width", "5", "--read-heads", "3", "--ways", "3", "--instances", "4", "--no-rotations",
             "--batch-size", "4", "--eval-every", "0", "--no-progress", "--threads", "1", "--final-eval", "0",
             "--encoder", "conv4", "--feature-norm", "l2", "--lr", "1e-2"]
    assert cli.main(["train", *flags, "--encoder-weights", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "conv4 encoder: initial weights from" in printed.out + printed.err
    state = torch.load(out / "checkpoint.pt", weights_only=False)["model"]
    start = net.state_dict()
    moved = [k for k, v in start.items() if v.is_floating_point() and not torch.equal(state["encoder.backbone." + k], v)]
    assert moved, "the encoder did not train"
    assert cli.main(["kshot", "--checkpoint", str(out / "checkpoint.pt"), "--episodes", "4", "--shots", "1",
                     "--queries", "2", "--no-progress"]) == 0
    assert cli.main(["train", *flags, "--image-size", "8", "--out", str(tmp_path / "small")]) == 2
    assert "--encoder conv4 halves the image four times: --image-size must be at least 16" in one_error_line(capsys)
