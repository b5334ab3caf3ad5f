"""The hand-written backward passes of PoPE's polar map and learned-angle RoPE equal autograd's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from popevit.models.pos_enc.pope import _PolarToCartesian, polar_to_cartesian
from popevit.models.pos_enc.rope import _RotaryLearned, apply_rotary, rotary_tables, rotate_learned


def _polar_reference(x, cos_sin):
    return (F.softplus(x).unsqueeze(-2) * cos_sin).flatten(-2)


def _rotary_reference(q, k, angles):
    cos, sin = rotary_tables(angles)
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)


@pytest.mark.parametrize("table_grad", [False, True], ids=["query-table", "key-table-with-delta"])
def test_polar_backward_gradcheck(table_grad):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 4, dtype=torch.double, generator=g).requires_grad_()
    table = torch.randn(3, 5, 2, 4, dtype=torch.double, generator=g).requires_grad_(table_grad)
    assert torch.autograd.gradcheck(_PolarToCartesian.apply, (x, table))


def test_rotary_backward_gradcheck():
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 3, 5, 8, dtype=torch.double, generator=g).requires_grad_() for _ in range(2))
    angles = torch.randn(3, 5, 4, dtype=torch.double, generator=g).requires_grad_()
    assert torch.autograd.gradcheck(_RotaryLearned.apply, (q, k, angles))


@pytest.mark.parametrize(
    "fused, reference, make",
    [
        (
            polar_to_cartesian,
            _polar_reference,
            lambda g: (torch.randn(4, 3, 17, 8, generator=g), torch.randn(3, 17, 2, 8, generator=g)),
        ),
        (
            rotate_learned,
            _rotary_reference,
            lambda g: (
                torch.randn(4, 3, 17, 8, generator=g),
                torch.randn(4, 3, 17, 8, generator=g),
                torch.randn(3, 17, 4, generator=g),
            ),
        ),
    ],
    ids=["pope-polar", "rope-learned-angles"],
)
def test_fused_equals_autograd_in_float32(fused, reference, make):
    inputs = make(torch.Generator().manual_seed(1))
    a = [t.clone().requires_grad_() for t in inputs]
    b = [t.clone().requires_grad_() for t in inputs]
    out_a, out_b = fused(*a), reference(*b)
    out_a, out_b = (out_a,) if torch.is_tensor(out_a) else out_a, (out_b,) if torch.is_tensor(out_b) else out_b
    w = [torch.randn(o.shape, generator=torch.Generator().manual_seed(2)) for o in out_b]
    for oa, ob in zip(out_a, out_b, strict=True):
        torch.testing.assert_close(oa, ob)
    torch.autograd.backward(out_a, w)
    torch.autograd.backward(out_b, w)
    for ta, tb in zip(a, b, strict=True):
        torch.testing.assert_close(ta.grad, tb.grad, rtol=1e-5, atol=1e-5)
    # without gradients the plain path runs and gives the same values
    with torch.no_grad():
        plain = fused(*inputs)
    plain = (plain,) if torch.is_tensor(plain) else plain
    for p, ob in zip(plain, out_b, strict=True):
        torch.testing.assert_close(p, ob.detach())
