"""Issue 31, cause 3: backbone weights files and names are checked as checkpoints are: every bad
file or name is one line (``UserError``), never a traceback, a download or ImageNet logits."""
from __future__ import annotations

import os

import pytest
import torch

from fewshot_mann.config import ModelConfig
from fewshot_mann.models.features import resolve_weights
from fewshot_mann.errors import UserError
from fewshot_mann.models import backbone_checks
from fewshot_mann.models.backbones import build_backbone, preprocessing

pytest.importorskip("timm")
ENCODER = "timm:test_efficientnet"


def own_state() -> dict:
    model, _ = build_backbone(ENCODER, "none")
    return {k: v.clone() for k, v in model.state_dict().items()}


def bad_file(kind: str, tmp_path) -> str:
    path = tmp_path / f"{kind}.pt"
    if kind == "other-architecture":
        from fewshot_mann.models.conv4 import FEWSHOT_BACKBONES
        torch.save(FEWSHOT_BACKBONES["conv4"][0]().state_dict(), path)
    elif kind == "wrong-shape":
        state = own_state()
        name = next(k for k, v in state.items() if v.ndim == 4)
        state[name] = torch.zeros(3, 3, 3, 3)
        torch.save(state, path)
    elif kind == "non-tensor-values":
        torch.save({k: 1.0 for k in own_state()}, path)
    elif kind == "integer-keys":
        torch.save({i: v for i, v in enumerate(own_state().values())}, path)
    elif kind == "nan-weights":
        state = own_state()
        name = next(k for k, v in state.items() if v.is_floating_point())
        state[name] = torch.full_like(state[name], float("nan"))
        torch.save(state, path)
    elif kind == "a-list":
        torch.save([torch.zeros(2)], path)
    elif kind == "random-bytes":
        path.write_bytes(os.urandom(4096))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "device":
        return "/dev/zero"
    elif kind == "unreadable-regular-file":  # stat says regular, every read fails
        return "/proc/self/mem"
    elif kind in ("meta-tensors", "complex-tensors"):
        torch.save({k: v.to("meta") if kind == "meta-tensors" else v.to(torch.complex64) if v.is_floating_point() else v
                    for k, v in own_state().items()}, path)
    return str(path)


KINDS = ["other-architecture", "wrong-shape", "non-tensor-values", "integer-keys", "nan-weights", "a-list",
         "random-bytes", "empty", "fifo", "folder", "device", "unreadable-regular-file", "meta-tensors",
         "complex-tensors"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_backbone_weights_file_is_one_line(kind, tmp_path):
    weights = bad_file(kind, tmp_path)
    with pytest.raises(UserError) as err:
        resolve_weights(ModelConfig(encoder=ENCODER, encoder_weights=weights), trained=False)
        build_backbone(ENCODER, weights)
    message = str(err.value)
    assert "\n" not in message and weights in message
    if kind in ("fifo", "folder", "device"):
        assert "no such file" not in message  # says what it is
    if kind == "nan-weights":
        assert "NaN" in message


def test_a_good_weights_file_still_loads(tmp_path):
    torch.save({"state_dict": own_state()}, tmp_path / "w.pt")
    model, digest = build_backbone(ENCODER, str(tmp_path / "w.pt"))
    assert len(digest) == 64


@pytest.mark.parametrize("name", ["fasterrcnn_resnet50_fpn", "raft_small", "r3d_18", "deeplabv3_resnet50"])
def test_torchvision_models_that_are_not_classifiers_are_refused_without_a_download(name, monkeypatch):
    import torchvision

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("a download"))
    torchvision.models.get_model_builder(name)  # torchvision has it ...
    with pytest.raises(UserError, match="not a torchvision classification model"):
        build_backbone(f"torchvision:{name}", "none")  # ... but it gives no feature vector


def test_a_backbone_that_returns_imagenet_logits_is_refused():
    with pytest.raises(UserError, match="1,000 ImageNet class scores"):
        backbone_checks.refuse_logits(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(1000)), "x:y", 8)
    model, _ = build_backbone("torchvision:swin_t", "none")  # its head is "head": removed now
    assert model(torch.zeros(1, 3, 224, 224)).shape[1] == 768


def test_timm_tagged_names_are_accepted():
    assert preprocessing("timm:resnet18.a1_in1k").image_size == 224
    model, _ = build_backbone("timm:resnet18.a1_in1k", "none")
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 512)


def test_a_timm_name_with_a_tag_timm_does_not_have_is_one_line():
    with pytest.raises(UserError, match="no weights of that tag"):
        build_backbone("timm:resnet18.no_such_tag", "none")
