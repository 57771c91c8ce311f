"""Conv4 backbone (models/conv4.py) and its prototypical pretraining (engine/pretrain.py), on tiny synthetic data."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from fewshot_mann.data.bank import ClassBank, SplitBanks
from fewshot_mann.engine.pretrain import PretrainConfig, pretrain, prototype_logits, split_timm
from fewshot_mann.errors import UserError
from fewshot_mann.models.conv4 import Conv4


def strokes_bank(classes: int, per_class: int = 6, size: int = 28, seed: int = 0, prefix: str = "c") -> ClassBank:
    """Each class a random sparse pattern (bright on dark) plus noise, uint8 (N, 1, size, size)."""
    rng = np.random.default_rng(seed)
    groups = []
    for _ in range(classes):
        base = (rng.random((1, 1, size, size)) < 0.15) * 255
        noise = rng.integers(-30, 31, (per_class, 1, size, size))
        groups.append(np.clip(base + noise, 0, 255).astype(np.uint8))
    return ClassBank.from_groups(groups, [f"{prefix}{i:02d}" for i in range(classes)])


@pytest.fixture
def tiny_parts(monkeypatch):
    parts = SplitBanks(strokes_bank(12, seed=1, prefix="train"), strokes_bank(6, seed=2, prefix="val"),
                       strokes_bank(6, seed=3, prefix="test"))
    from fewshot_mann.engine import loading
    monkeypatch.setattr(loading, "load_image_parts", lambda cfg, progress=True, recorded=None: parts)
    return parts


def test_conv4_maps_28px_to_64_features_and_reads_colour_as_gray():
    net = Conv4().eval()
    gray = torch.rand(3, 1, 28, 28)
    assert net(gray).shape == (3, 64) and net.num_features == 64
    assert torch.allclose(net(gray.expand(-1, 3, -1, -1)), net(gray), atol=1e-6)  # (x + x + x) / 3, rounded


def test_prototype_logits_are_minus_squared_distances_to_class_means():
    feats = torch.randn(3 * (2 + 1), 4)  # 3 ways, 2 shots, 1 query, class by class
    logits = prototype_logits(feats, ways=3, shots=2, queries=1)
    f = feats.view(3, 3, 4)
    for q in range(3):
        for c in range(3):
            expected = -((f[q, 2] - f[c, :2].mean(0)) ** 2).sum()
            assert torch.allclose(logits[q, c], expected, atol=1e-5)


def test_pretrain_writes_the_best_validation_check_weights_only(tiny_parts, tmp_path):
    p = PretrainConfig(ways=4, shots=1, queries=2, episodes=4, check_every=2, check_trials=3, rotations=True)
    best = pretrain(p, tmp_path / "w.pt", device=torch.device("cpu"), progress=False)
    saved = torch.load(tmp_path / "w.pt", weights_only=True)
    log = [json.loads(line) for line in (tmp_path / "w.jsonl").read_text().splitlines()]
    assert [c["episode"] for c in log] == [0, 2, 4] and log[0]["loss"] is None  # the starting point is checked too
    assert saved["checks"] == log[: len(saved["checks"])] and saved["checks"][-1]["episode"] == best["episode"]
    assert saved["best"] == best and 0.0 <= best["accuracy"] <= 1.0
    assert best["accuracy"] == pytest.approx(max(c["validation_accuracy"] for c in log), abs=1e-5)
    net = Conv4()
    net.load_state_dict(saved["state_dict"])  # the backbone itself, nothing else
    assert saved["pretrain"]["ways"] == 4


def test_pretrain_is_seeded(tiny_parts, tmp_path):
    p = PretrainConfig(ways=4, queries=2, episodes=2, check_every=2, check_trials=2)
    for name in ("a.pt", "b.pt"):
        pretrain(p, tmp_path / name, device=torch.device("cpu"), progress=False)
    a, b = (torch.load(tmp_path / n, weights_only=True)["state_dict"] for n in ("a.pt", "b.pt"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pretrain_refuses_what_it_cannot_train(tiny_parts, tmp_path):
    with pytest.raises(UserError, match="fewshot: backbones"):
        pretrain(PretrainConfig(encoder="torchvision:resnet18"), tmp_path / "w.pt", device=torch.device("cpu"))
    with pytest.raises(UserError, match="cannot make a 40-way episode"):
        pretrain(PretrainConfig(ways=40, rotations=False), tmp_path / "w.pt", device=torch.device("cpu"))


def test_pretrained_conv4_is_a_backbone_the_memory_models_train_over(tiny_parts, tmp_path, monkeypatch):
    from fewshot_mann.cli import main as cli
    from fewshot_mann.models.backbones import build_backbone, preprocessing

    pretrain(PretrainConfig(ways=4, queries=2, episodes=2, check_every=2, check_trials=2), tmp_path / "w.pt",
             device=torch.device("cpu"), progress=False)
    assert preprocessing("fewshot:conv4").image_size == 28
    backbone, digest = build_backbone("fewshot:conv4", str(tmp_path / "w.pt"))
    net = Conv4().eval()
    net.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True)["state_dict"])
    x = torch.rand(2, 3, 28, 28)
    assert torch.equal(backbone(x), net(x)) and len(digest) == 64
    with pytest.raises(UserError, match="no ImageNet weights"):
        build_backbone("fewshot:conv4", "imagenet")
    monkeypatch.setenv("FEWSHOT_MANN_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert cli.main(["train", "--encoder", "fewshot:conv4", "--encoder-weights", str(tmp_path / "w.pt"),
                     "--ways", "3", "--instances", "2", "--episodes", "4", "--batch-size", "2", "--eval-every", "2",
                     "--eval-episodes", "2", "--final-eval", "2", "--controller-size", "8", "--memory-slots", "6",
                     "--memory-width", "4", "--read-heads", "1", "--no-progress", "--out", str(run)]) == 0
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["config"]["model"]["encoder"] == "fewshot:conv4" and ckpt["config"]["model"]["feature_dim"] == 64


def test_pretrain_cli_checks_its_flags_before_any_work(capsys):
    from fewshot_mann.cli import main as cli

    assert cli.main(["pretrain", "--out", "x.pt", "--ways", "0"]) == 2
    assert "--ways must be at least 1" in capsys.readouterr().err
    assert cli.main(["pretrain", "--out", "x.txt"]) == 2
    assert "--out" in capsys.readouterr().err


def test_a_published_conv4_checkpoint_finds_its_weights_beside_it(tiny_parts, tmp_path, monkeypatch, capsys):
    from fewshot_mann.cli import main as cli

    monkeypatch.setenv("FEWSHOT_MANN_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "runs" / "conv4.pt"
    pretrain(PretrainConfig(ways=4, queries=2, episodes=2, check_every=2, check_trials=2), weights,
             device=torch.device("cpu"), progress=False)
    run = tmp_path / "runs" / "mann"
    assert cli.main(["train", "--encoder", "fewshot:conv4", "--encoder-weights", str(weights), "--ways", "3",
                     "--instances", "2", "--episodes", "2", "--batch-size", "2", "--eval-every", "0", "--final-eval",
                     "0", "--controller-size", "8", "--memory-slots", "6", "--memory-width", "4", "--read-heads", "1",
                     "--no-progress", "--out", str(run)]) == 0
    published = tmp_path / "published"
    published.mkdir()
    (run / "checkpoint.pt").rename(published / "mann.pt")
    weights.rename(published / "conv4.pt")  # the recorded path is gone; the file travels with the checkpoint
    argv = ["evaluate", "--checkpoint", str(published / "mann.pt"), "--episodes", "2", "--no-progress"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    (published / "conv4.pt").rename(published / "conv4-published.pt")  # another name: found by its sha256
    assert cli.main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    (published / "conv4-published.pt").unlink()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "put that file (conv4.pt) beside the checkpoint" in err and "Traceback" not in err


def test_a_timm_backbone_is_fine_tuned_in_its_last_stages_only(monkeypatch, tmp_path):
    timm = pytest.importorskip("timm")
    from fewshot_mann.engine import loading
    from fewshot_mann.models.backbones import build_backbone

    rng = np.random.default_rng(5)
    def colour_bank(classes, prefix):
        groups = [np.clip(rng.integers(0, 256, (1, 3, 64, 64)) + rng.integers(-20, 21, (6, 3, 64, 64)), 0, 255)
                  .astype(np.uint8) for _ in range(classes)]
        return ClassBank.from_groups(groups, [f"{prefix}{i}" for i in range(classes)])
    parts = SplitBanks(colour_bank(6, "train"), colour_bank(5, "val"), colour_bank(5, "test"))
    monkeypatch.setattr(loading, "load_image_parts", lambda cfg, progress=True, recorded=None: parts)
    from fewshot_mann.engine import pretrain as pretrain_module

    scores = iter([0.1, 0.2, 0.3])  # every check improves, so the file holds the last step's weights
    monkeypatch.setattr(pretrain_module, "check", lambda *a, **k: next(scores))
    p = PretrainConfig(encoder="timm:test_efficientnet", encoder_weights="none", ways=4, shots=1, queries=2,
                       episodes=2, check_every=1, check_trials=2, finetune_stages=2, lr=1e-2)
    assert pretrain(p, tmp_path / "ft.pt", device=torch.device("cpu"), progress=False)["episode"] == 2
    saved = torch.load(tmp_path / "ft.pt", weights_only=True)["state_dict"]
    start, _ = build_backbone("timm:test_efficientnet", "none")  # the seeded random weights it started from
    fresh = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    fresh.load_state_dict(saved)  # strict: the whole backbone, loadable by --encoder-weights PATH
    before = start.state_dict()
    stages = len(start.blocks)
    tail = (*(f"blocks.{i}." for i in range(stages - 2, stages)), "conv_head.", "bn2.")
    changed = {k for k in before if not torch.equal(before[k], saved[k]) and before[k].is_floating_point()}
    assert changed and all(k.startswith(tail) for k in changed)  # the stem never moves
    assert any(k.startswith("conv_head.") for k in changed)
    net, digest = build_backbone("timm:test_efficientnet", str(tmp_path / "ft.pt"))
    assert all(torch.equal(net.state_dict()[k], saved[k]) for k in saved) and len(digest) == 64


def test_fine_tuning_that_never_helps_keeps_the_starting_weights(tiny_parts, tmp_path, monkeypatch):
    from fewshot_mann.engine import pretrain as pretrain_module

    scores = iter([0.5, 0.4, 0.3])  # the starting point is the best check
    monkeypatch.setattr(pretrain_module, "check", lambda *a, **k: next(scores))
    p = PretrainConfig(ways=4, queries=2, episodes=2, check_every=1, check_trials=2)
    assert pretrain(p, tmp_path / "w.pt", device=torch.device("cpu"), progress=False) == {"accuracy": 0.5, "episode": 0}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(p.seed)
        start = Conv4().state_dict()
    saved = torch.load(tmp_path / "w.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(start[k], saved[k]) for k in start)


def test_finetune_stages_zero_trains_the_whole_timm_network():
    pytest.importorskip("timm")
    from fewshot_mann.models.backbones import build_backbone

    whole, _ = build_backbone("timm:test_efficientnet", "none")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = whole.eval()(x)
    stem, tail = split_timm(whole, 0)
    trained = {id(q) for q in tail.parameters()}
    assert isinstance(stem, torch.nn.Identity)
    assert all(id(q) in trained for q in whole.parameters())  # every layer, the stem convolution too
    with torch.no_grad():
        assert torch.allclose(tail.eval()(stem(x)), expected, atol=1e-6)
    with pytest.raises(UserError, match="between 0"):
        split_timm(whole, len(whole.blocks) + 1)


@pytest.mark.parametrize("flags, stages", [([], 2), (["--finetune-stages", "3"], 3),
                                           (["--finetune-backbone", "last"], 1), (["--finetune-backbone", "all"], 0)])
def test_pretrain_cli_finetune_flags(monkeypatch, tmp_path, flags, stages):
    from fewshot_mann.cli import pretrain as cli

    seen = {}
    monkeypatch.setattr(cli, "pretrain", lambda p, out, **k: seen.setdefault("p", p) and {"accuracy": 0.5,
                                                                                            "episode": 1})
    assert cli.main(["--encoder", "timm:test_efficientnet", "--out", str(tmp_path / "w.pt"), *flags]) == 0
    assert seen["p"].finetune_stages == stages


def test_pretrain_cli_refuses_both_finetune_flags(tmp_path, capsys):
    from fewshot_mann.cli import pretrain as cli

    with pytest.raises(SystemExit) as exc:  # argparse's one-line refusal
        cli.main(["--out", str(tmp_path / "w.pt"), "--finetune-stages", "1", "--finetune-backbone", "all"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "not allowed with" in err and "Traceback" not in err


def test_pretrain_asks_of_a_folder_only_what_its_own_episodes_need(tmp_path, monkeypatch):
    """Issue 31: not train's default 5 held-out classes x 10 images, whatever --ways."""
    from fewshot_mann.engine.pretrain import PretrainConfig, load_parts
    from helpers.images import make_image_folder

    monkeypatch.setenv("FEWSHOT_MANN_CACHE", str(tmp_path / "cache"))
    data = make_image_folder(tmp_path / "data", classes=10, per_class=4, size_range=(8, 12))
    p = PretrainConfig(dataset="folder", data_root=str(data["root"]), test_classes="0.3", validation_classes="0.5",
                       rotations=False, ways=2, shots=1, queries=2)
    train, validation = load_parts(p, 8, progress=False)
    assert (train.num_classes, validation.num_classes) == (2, 5)


def test_pen_augment_trains_on_restyled_images_and_checks_the_restyled_validation_too(tiny_parts, tmp_path,
                                                                                      monkeypatch):
    from fewshot_mann.engine import pretrain as module

    real_check, calls = module.check, []

    def rising_check(*args, **kwargs):  # every check better than the last: the final weights are saved
        calls.append(kwargs.get("pen", module.NO_PEN))
        return min(1.0, real_check(*args, **kwargs) * 0 + len(calls) / 10)

    monkeypatch.setattr(module, "check", rising_check)
    p = PretrainConfig(ways=4, queries=2, episodes=2, check_every=2, check_trials=2)
    pretrain(p, tmp_path / "plain.pt", device=torch.device("cpu"), progress=False)
    assert all(pen is module.NO_PEN for pen in calls)
    calls.clear()
    pen = PretrainConfig(**{**p.__dict__, "pen_augment": True})
    pretrain(pen, tmp_path / "pen.pt", device=torch.device("cpu"), progress=False)
    assert module.HANDWRITING in calls  # the restyled validation is checked
    plain, styled = (torch.load(tmp_path / n, weights_only=True) for n in ("plain.pt", "pen.pt"))
    log = [json.loads(line) for line in (tmp_path / "pen.jsonl").read_text().splitlines()]
    assert [row["episode"] for row in log] == [0, 2] and all("validation_accuracy_pen" in row for row in log)
    assert "validation_accuracy_pen" not in plain["checks"][0]
    assert styled["pretrain"]["pen_augment"] is True
    # the same seeds and episodes: only the restyling differs, so the trained weights do
    assert any(not torch.equal(plain["state_dict"][k], styled["state_dict"][k]) for k in plain["state_dict"])
    with pytest.raises(UserError, match="restyles raw pixels"):
        pretrain(PretrainConfig(encoder="timm:tf_efficientnet_lite0", encoder_weights="none", pen_augment=True),
                 tmp_path / "w.pt", device=torch.device("cpu"))


def test_within_alphabet_episodes_draw_every_class_from_one_alphabet():
    from fewshot_mann.engine.pretrain import alphabet_groups, draw

    groups, names = [], []
    for alphabet, size in (("A", 6), ("B", 3), ("C", 5)):
        for c in range(size):
            groups.append(np.full((2, 1, 4, 4), len(names), np.uint8))  # every pixel: the class index
            names.append(f"background/{alphabet}/character{c:02d}" + ("@rot90" if c == size - 1 else ""))
    bank = ClassBank.from_groups(groups, names)
    kept = alphabet_groups(bank, 4)
    assert [sorted(bank.names[i].split("/")[1] for i in g) for g in kept] == [["A"] * 6, ["C"] * 5]  # B too small
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = draw(bank, rng, 4, 2, kept)
        alphabets = {names[int(v)].split("/")[1] for v in (x[::2, 0, 0, 0] * 255).round()}
        assert len(alphabets) == 1
    with pytest.raises(UserError, match="no alphabet"):
        alphabet_groups(bank, 7)


def test_pretrain_within_alphabet_refuses_classes_without_alphabets(tiny_parts, tmp_path):
    """The flag reaches the training loop: the synthetic classes are named without alphabets (each its own)."""
    with pytest.raises(UserError, match="no alphabet of the training classes has 4 classes"):
        pretrain(PretrainConfig(ways=4, queries=2, episodes=1, within_alphabet=True), tmp_path / "w.pt",
                 device=torch.device("cpu"), progress=False)


def test_pretrain_refuses_an_ensemble_in_one_line(tmp_path):
    with pytest.raises(UserError, match="pretrain trains one backbone"):
        pretrain(PretrainConfig(encoder="timm:test_efficientnet+timm:test_efficientnet_gn", encoder_weights="none"),
                 tmp_path / "w.pt", device=torch.device("cpu"))
    assert not (tmp_path / "w.pt").exists()


def test_a_resumed_pretraining_equals_the_unbroken_run_and_may_be_extended(tiny_parts, tmp_path):
    p = PretrainConfig(ways=4, queries=2, episodes=6, check_every=2, check_trials=2, lr_halve_every=3)
    pretrain(p, tmp_path / "whole.pt", device=torch.device("cpu"), progress=False)
    pretrain(dataclasses.replace(p, episodes=2), tmp_path / "part.pt", device=torch.device("cpu"), progress=False)
    best = pretrain(p, tmp_path / "part.pt", device=torch.device("cpu"), progress=False, resume=True)
    whole, part = (torch.load(tmp_path / f"{n}.state.pt", weights_only=True) for n in ("whole", "part"))
    assert whole["step"] == part["step"] == 6
    assert all(torch.equal(whole["net"][k], part["net"][k]) for k in whole["net"])  # bit for bit
    assert [c["episode"] for c in part["checks"]] == [0, 2, 4, 6]
    assert [c["validation_accuracy"] for c in part["checks"]] == [c["validation_accuracy"] for c in whole["checks"]]
    assert best == whole["best"] == torch.load(tmp_path / "part.pt", weights_only=True)["best"]


def test_pretrain_resume_refuses_other_settings_a_finished_run_and_no_state(tiny_parts, tmp_path):
    p = PretrainConfig(ways=4, queries=2, episodes=2, check_every=2, check_trials=2)
    with pytest.raises(UserError, match="no run state"):
        pretrain(p, tmp_path / "w.pt", device=torch.device("cpu"), progress=False, resume=True)
    pretrain(p, tmp_path / "w.pt", device=torch.device("cpu"), progress=False)
    with pytest.raises(UserError, match=r"--ways 3 \(the run has 4\)"):
        pretrain(dataclasses.replace(p, ways=3, episodes=4), tmp_path / "w.pt", device=torch.device("cpu"), resume=True)
    with pytest.raises(UserError, match="already trained 2 episodes"):
        pretrain(p, tmp_path / "w.pt", device=torch.device("cpu"), progress=False, resume=True)
