"""Grad-CAM (CNN and ViT reshape), the baselines, the method registry and the Adebayo randomisation check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from popevit.explain.gradcam import tokens_to_grid, vit_target_layer
from popevit.explain.methods import METHODS, explain_batch, list_methods, methods_for
from popevit.models import create_model


def test_tokens_to_grid_puts_token_r_times_gw_plus_c_at_row_r_column_c():
    B, gh, gw, C = 2, 3, 4, 5
    tokens = torch.randn(B, 1 + gh * gw, C)
    grid = tokens_to_grid(1, (gh, gw))(tokens)  # (B, C, gh, gw)
    assert grid.shape == (B, C, gh, gw)
    for r in range(gh):
        for c in range(gw):
            torch.testing.assert_close(grid[:, :, r, c], tokens[:, 1 + r * gw + c])
    with pytest.raises(ValueError, match="do not match 1 prefix tokens"):
        tokens_to_grid(1, (2, 2))(tokens)


def test_registry_is_strict_and_lists_the_baseline():
    assert set(list_methods()) >= {"rollout", "grad-rollout", "gradcam", "random"}
    with pytest.raises(ValueError, match="did you mean 'grad-rollout'"):
        METHODS.get("grad_rollout")


def test_resnet18_gets_gradcam_only_and_rollout_explains_why():
    model = create_model("resnet18", num_classes=3, img_size=64).eval()
    assert methods_for(model) == ["gradcam", "random"]
    x, t = torch.randn(2, 1, 64, 64), torch.tensor([0, 2])  # layer4 is 2x2 at 64 px (1x1 at 32 px: a constant map)
    maps = explain_batch(model, x, t, "gradcam")
    assert maps.shape == (2, 64, 64) and torch.isfinite(maps).all() and maps.max() > 0
    with pytest.raises(ValueError, match="use --method gradcam"):
        explain_batch(model, x, t, "rollout")


@pytest.mark.parametrize("name", ["deit_small", "deit_small_pope", "vit_b16"])
def test_every_method_runs_on_the_pretrained_vit_baselines(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, img_size=32).eval()
    if name == "vit_b16":
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-initialises the head: no gradient
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([0, 1])
    for method in ("rollout", "grad-rollout", "gradcam"):
        native = METHODS.get(method)(model, x, t)
        expected = (2, 2, 2) if method != "gradcam" else (2, 32, 32)
        assert native.shape == expected, (name, method)
        assert torch.isfinite(native).all() and native.max() > 0, (name, method)
    assert vit_target_layer(model) is not None


@pytest.mark.parametrize("method", ["grad-rollout", "gradcam"])
def test_gradient_methods_depend_on_the_target_class(method):
    torch.manual_seed(0)
    model = create_model("vit_p8_w32_d2", num_classes=3, img_size=32, pos_enc="sincos").eval()
    x = torch.randn(1, 1, 32, 32).expand(3, -1, -1, -1)
    maps = explain_batch(model, x, torch.tensor([0, 1, 2]), method)
    assert not torch.allclose(maps[0], maps[1]) and not torch.allclose(maps[1], maps[2])


def _trained_tiny(phantom_root, steps: int = 30) -> tuple[torch.nn.Module, torch.Tensor]:
    from popevit.config import PreprocessConfig
    from popevit.data.decode import load_image
    from popevit.data.preprocess import preprocess_image, to_tensor

    cfg = PreprocessConfig(img_size=32)
    classes = ["glioma", "meningioma", "notumor", "pituitary"]
    xs, ys = [], []
    for k, c in enumerate(classes):
        for p in sorted((phantom_root / c).glob("*.png"))[:6]:
            xs.append(to_tensor(preprocess_image(load_image(p), cfg), cfg))
            ys.append(k)
    x, y = torch.stack(xs), torch.tensor(ys)
    model = create_model("vit_p8_w32_d2", num_classes=4, img_size=32, pos_enc="pope")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), x[::3]


def _randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Adebayo et al. 2018 (arXiv:1810.03292) full randomisation: every weight re-drawn, same architecture."""
    import copy

    torch.manual_seed(seed)
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for p in clone.parameters():
            p.copy_(torch.randn_like(p) * (p.std() if p.numel() > 1 and p.std() > 0 else 0.02))
    return clone.eval()


@pytest.mark.parametrize("method", ["rollout", "grad-rollout", "gradcam"])
def test_maps_change_when_weights_are_randomised(phantom_root, method):
    """Model-parameter randomisation test (Adebayo et al., NeurIPS 2018): a map that survives it is an edge detector."""
    model, x = _trained_tiny(phantom_root)
    t = model(x).argmax(1)
    trained = explain_batch(model, x, t, method)
    rand = explain_batch(_randomised(model, seed=1), x, t, method)
    again = explain_batch(model, x, t, method)
    torch.testing.assert_close(trained, again)  # deterministic: any change below comes from the weights
    rhos = [spearmanr(a.flatten().numpy(), b.flatten().numpy()).statistic for a, b in zip(trained, rand, strict=True)]
    assert not torch.allclose(trained, rand, rtol=0.05, atol=0.0)
    # Gradient-based maps lose their ranking; plain rollout keeps a rank correlation of ~0.7-0.95 with the maps of
    # a randomly weighted model (its attention follows token similarity, i.e. the input), so it gets a looser bound.
    bound = 0.98 if method == "rollout" else 0.5
    assert np.nanmean(np.abs(rhos)) < bound, f"{method}: maps barely depend on the weights (rho {np.round(rhos, 3)})"
