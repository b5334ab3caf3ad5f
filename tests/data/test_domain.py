"""Mitigations of the source confound: domain randomisation, head masking and fixed intensity scaling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from popevit.config import AugmentConfig, DomainConfig, PreprocessConfig
from popevit.data.decode import load_image
from popevit.data.preprocess import head_mask, preprocess_image, settings_key
from popevit.data.transforms import (
    DomainRandomization,
    bias_field,
    build_eval_transform,
    build_train_transform,
    down_up,
    gaussian_blur,
    jpeg_compress,
    match_histograms,
    random_curve,
)


def _batch(b: int = 6, s: int = 32) -> torch.Tensor:
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, s), torch.linspace(-1, 1, s), indexing="ij")
    head = ((yy**2 + xx**2) < 0.6).float()
    return (head * (0.3 + 0.5 * torch.rand(b, 1, s, s))).clamp(0, 1)  # (B, 1, S, S): a bright disc, black outside


def test_monotone_curves_keep_the_order_of_grey_levels():
    x = torch.linspace(0, 1, 64).view(1, 1, 8, 8).repeat(4, 1, 1, 1)
    y = random_curve(x, points=6, nonmonotone=0.0).flatten(1)
    assert (y.diff(dim=1) >= -1e-6).all() and y.min() >= 0 and y.max() <= 1
    assert not torch.allclose(y[0], y[1])  # each image has its own curve
    torch.manual_seed(1)
    free = random_curve(x, points=6, nonmonotone=1.0).flatten(1)
    assert (free.diff(dim=1) < -1e-3).any()  # non-monotone curves reorder tissue brightness


def test_histogram_matching_takes_the_reference_histogram_and_keeps_ties_tied():
    torch.manual_seed(0)
    x, ref = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32) ** 3
    y = match_histograms(x, ref)
    gap = np.abs(np.sort(y.flatten(1).numpy()) - np.sort(ref.flatten(1).numpy()))  # 256 grey levels: quantised
    assert gap.mean() < 0.005 and gap.max() < 0.05
    by_x = y.flatten(1).gather(1, x.flatten(1).argsort(1))
    assert (by_x.diff(dim=1) >= -1e-6).all()  # a monotone map: brighter stays brighter
    flat = _batch(2)
    out = match_histograms(flat, ref)
    assert len(torch.unique(out[0][flat[0] == 0])) == 1  # a flat background stays flat


def test_jpeg_at_quality_100_is_nearly_lossless_and_low_quality_is_not():
    x = _batch(2, 32)
    assert (jpeg_compress(x, torch.tensor([100, 100])) - x).abs().max() < 0.02
    assert (jpeg_compress(x, torch.tensor([5, 5])) - x).abs().mean() > 0.02
    odd = torch.rand(1, 1, 30, 30)  # sides that are not multiples of 8 are padded and cropped back
    assert jpeg_compress(odd, torch.tensor([50])).shape == odd.shape


def test_blur_down_up_and_bias_field_are_smooth_per_image_changes():
    x = _batch(3)
    blurred = gaussian_blur(x, torch.tensor([0.0, 1.0, 2.0]))
    torch.testing.assert_close(blurred[0], x[0], atol=1e-4, rtol=0)  # sigma 0 leaves the image alone
    assert blurred[2].diff(dim=-1).abs().mean() < blurred[1].diff(dim=-1).abs().mean()
    assert down_up(x, torch.tensor([1.0, 2.0, 4.0])).shape == x.shape
    torch.testing.assert_close(down_up(x, torch.tensor([1.0, 1.0, 1.0])), x)
    field = bias_field(torch.ones(2, 1, 32, 32), torch.tensor([0.0, 0.5]))
    torch.testing.assert_close(field[0], torch.ones(1, 32, 32))
    assert field[1].mean().item() == pytest.approx(1.0, abs=1e-5) and field[1].std() > 0.05


def test_domain_randomization_is_seeded_and_stays_in_range():
    cfg = DomainConfig(p=0.5, curve=True, invert=True, hist_match=True, bias_field=0.3, blur=1.0, noise=0.05,
                       resample=3, jpeg=(30, 90))  # fmt: skip
    x = _batch(8)
    torch.manual_seed(3)
    a = DomainRandomization(cfg)(x)
    torch.manual_seed(3)
    b = DomainRandomization(cfg)(x)
    torch.testing.assert_close(a, b)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1 and not torch.allclose(a, x)
    assert not DomainConfig().active and cfg.active
    off = build_train_transform(AugmentConfig(rotation=0, translate=0, scale=(1, 1), hflip=0), PreprocessConfig())
    assert off.domain is None
    on = build_train_transform(AugmentConfig(domain=cfg), PreprocessConfig(img_size=32))
    assert on(x).shape == x.shape


def test_domain_config_refuses_a_bad_jpeg_range():
    with pytest.raises(ValueError, match="jpeg quality range"):
        DomainConfig(jpeg=(90, 30))


def test_fixed_normalisation_is_one_affine_map_for_every_image():
    x = _batch(2)
    fixed = build_eval_transform(PreprocessConfig(normalize="fixed"))(x)
    torch.testing.assert_close(fixed, (x - 0.5) / 0.25)
    per_image = build_eval_transform(PreprocessConfig())(x)
    assert per_image.flatten(1).mean(1).abs().max() < 1e-5


def test_head_mask_blacks_out_the_background_and_frame(phantom_root):
    path = next((phantom_root / "glioma").glob("*.png"))
    plain = preprocess_image(load_image(path), PreprocessConfig(img_size=64))
    masked = preprocess_image(load_image(path), PreprocessConfig(img_size=64, head_mask=True))
    eroded = preprocess_image(load_image(path), PreprocessConfig(img_size=64, head_mask=True, head_erode=0.08))
    assert masked.shape == plain.shape == (64, 64) and masked.dtype == np.uint8
    assert masked[0, 0] == masked[0, -1] == masked[-1, 0] == masked[-1, -1] == 0  # the background is black
    assert (masked == 0).mean() > 0.1 and (plain == 0).mean() < (masked == 0).mean()
    assert (masked > 0).sum() > (eroded > 0).sum() > 0  # erosion strips scalp and skull
    inside = head_mask(masked.astype(np.float32))
    assert inside.mean() > 0.4  # the tight crop fills the frame with the head


def test_cache_key_changes_only_when_masking_is_on():
    base = settings_key(PreprocessConfig())
    assert "head_mask" not in base  # arrays cached before the option existed stay valid
    assert settings_key(PreprocessConfig(head_mask=True)) != settings_key(
        PreprocessConfig(head_mask=True, head_erode=0.1)
    )
    with pytest.raises(ValueError, match="head_erode shrinks the head mask"):
        PreprocessConfig(head_erode=0.1)
