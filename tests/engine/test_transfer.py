"""--init-from weight transfer: copied, adapted to a new image size/channels, or re-initialised."""
from __future__ import annotations

import pytest
import torch

from helpers import tiny_config
from fewshot_mann.errors import UserError
from fewshot_mann.engine.trainer import new_model
from fewshot_mann.engine.transfer import resample_pixel_weights, transfer_weights


def cfg_of(size, channels, ways=3, model="mann", encoder="linear"):
    cfg = tiny_config(model=model, encoder=encoder)
    cfg.data.image_size, cfg.data.channels, cfg.episodes.ways = size, channels, ways
    return cfg


def test_resampled_pixel_weights_keep_the_response_to_a_uniform_grey_image():
    torch.manual_seed(0)
    w = torch.randn(7, 1 * 20 * 20)
    for size, channels in ((8, 3), (32, 1), (20, 3)):
        new = resample_pixel_weights(w, 1, 20, channels, size)
        assert new.shape == (7, channels * size * size)
        grey_old = w @ torch.full((400,), 0.5)
        grey_new = new @ torch.full((channels * size * size,), 0.5)
        assert torch.allclose(grey_old, grey_new, rtol=1e-4, atol=1e-4)
    back = resample_pixel_weights(resample_pixel_weights(w, 1, 20, 3, 20), 3, 20, 1, 20)
    assert torch.allclose(back, w, atol=1e-6)  # gray -> RGB -> gray is exact at the same size


def test_transfer_reports_what_it_copied_adapted_and_reinitialised():
    src_cfg, dst_cfg = cfg_of(20, 1, ways=5), cfg_of(8, 3, ways=3)
    src, dst = new_model(src_cfg), new_model(dst_cfg)
    lines = transfer_weights(dst, dst_cfg, src.state_dict(), src_cfg, source="omni.pt")
    text = "\n".join(lines)
    assert "input adapted: the checkpoint reads 20x20 grayscale images, this run 8x8 RGB" in text
    assert "re-initialised output.weight" in text and "labels differ" in text
    own = dst.state_dict()
    assert torch.equal(own["recurrent.weight"], src.state_dict()["recurrent.weight"])  # copied as is
    f = 3 * 8 * 8
    expect = resample_pixel_weights(src.state_dict()["input_proj.weight"][:, :400], 1, 20, 3, 8)
    assert torch.allclose(own["input_proj.weight"][:, :f], expect)


def test_conv_encoder_channels_are_mapped_and_other_models_refused():
    src_cfg, dst_cfg = cfg_of(8, 1, encoder="conv"), cfg_of(8, 3, encoder="conv")
    src, dst = new_model(src_cfg), new_model(dst_cfg)
    text = "\n".join(transfer_weights(dst, dst_cfg, src.state_dict(), src_cfg))
    assert "mapped from 1 to 3 input channels" in text
    first = [k for k, v in dst.state_dict().items() if v.ndim == 4][0]
    assert torch.allclose(dst.state_dict()[first].sum(1), src.state_dict()[first][:, 0])
    with pytest.raises(UserError, match="use the same --model"):
        transfer_weights(new_model(cfg_of(8, 1, model="lstm")), cfg_of(8, 1, model="lstm"), src.state_dict(), src_cfg)
