"""Deletion/insertion, mask mass and pointing game against a model whose evidence is known by construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from popevit.explain.faithfulness import (
    area_fraction,
    deletion_insertion,
    mask_mass,
    pointing_game,
    saliency_rank,
)


class RegionModel(nn.Module):
    """A real classifier whose class-1 logit is the mean absolute input inside a fixed box, times a gain."""

    def __init__(self, box: tuple[int, int, int, int], size: int = 16, gain: float = 2.0) -> None:
        super().__init__()
        weight = torch.zeros(size, size)
        t, l, b, r = box
        weight[t:b, l:r] = 1.0 / ((b - t) * (r - l))
        self.register_buffer("weight", weight)
        self.gain = nn.Parameter(torch.tensor(gain))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        evidence = (x.abs().mean(1) * self.weight).sum((1, 2))  # (B,)
        return torch.stack([torch.zeros_like(evidence), self.gain * evidence - 2.0], dim=1)  # (B, 2)


BOX = (4, 4, 8, 8)


def _oracle_maps(n: int) -> torch.Tensor:
    m = torch.zeros(n, 16, 16)
    m[:, BOX[0] : BOX[2], BOX[1] : BOX[3]] = 1.0
    return m


def test_deletion_and_insertion_rank_the_true_evidence_above_random_and_inverted_maps():
    model = RegionModel(BOX).eval()
    x = 3.0 * torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))  # blur removes the evidence
    t = torch.ones(3, dtype=torch.long)
    oracle = deletion_insertion(model, x, _oracle_maps(3), t, steps=16)
    inverted = deletion_insertion(model, x, 1 - _oracle_maps(3), t, steps=16)
    random = deletion_insertion(
        model, x, torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1)), t, steps=16
    )
    assert oracle.deletion.shape == (3, 17) and oracle.fractions[0] == 0 and oracle.fractions[-1] == 1
    assert (oracle.deletion_auc < random.deletion_auc).all() and (random.deletion_auc < inverted.deletion_auc).all()
    assert (oracle.insertion_auc > random.insertion_auc).all() and (random.insertion_auc > inverted.insertion_auc).all()
    # Both curves start and end where they must: deletion at the image, insertion at the image once all is in.
    with torch.no_grad():
        p = model(x).softmax(-1)[:, 1].numpy()
    np.testing.assert_allclose(oracle.deletion[:, 0], p, rtol=1e-5)
    np.testing.assert_allclose(oracle.insertion[:, -1], p, rtol=1e-5)


def test_deletion_insertion_rejects_maps_of_the_wrong_size():
    model = RegionModel(BOX).eval()
    with pytest.raises(ValueError, match="upsample first"):
        deletion_insertion(model, torch.zeros(1, 1, 16, 16), torch.zeros(1, 4, 4), torch.ones(1, dtype=torch.long))


def test_saliency_rank_is_a_permutation_that_breaks_ties_without_a_raster_bias():
    maps = torch.zeros(2, 8, 8)
    maps[0, 5, 5] = 1.0
    rank = saliency_rank(maps, seed=0)
    assert sorted(rank[0].tolist()) == list(range(64)) and rank[0, 5 * 8 + 5] == 0
    # The constant map's order is not row-major (top-left first would bias deletion towards the top rows).
    assert rank[1].tolist() != list(range(64))


def test_mask_mass_area_fraction_and_pointing_game_by_hand():
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[:, 0, 0] = True
    maps = torch.zeros(2, 4, 4)
    maps[0, 0, 0], maps[0, 3, 3] = 3.0, 1.0  # 75% in the mask, peak inside
    maps[1, 0, 1], maps[1, 3, 3] = 2.0, 2.0  # none in the mask, peak one pixel off
    np.testing.assert_allclose(mask_mass(maps, masks), [0.75, 0.0])
    np.testing.assert_allclose(area_fraction(masks), [1 / 16, 1 / 16])
    assert pointing_game(maps, masks).tolist() == [True, False]
    assert pointing_game(maps, masks, tolerance=1).tolist() == [True, True]
