"""Positional encodings behind one strict registry; importing this package registers every family.

Adding a PE: write one class in one file of this package, decorate it with ``@register_pos_enc("name")`` and import
the file below. The registry-parametrised tests then cover it without new test code.
"""

from __future__ import annotations

from popevit.models.pos_enc import absolute, pope, relative, rope  # noqa: F401  (registration side effects)
from popevit.models.pos_enc.base import POS_ENCS, PositionalEncoding, patch_positions, register_pos_enc


def build_pos_enc(
    name: str, *, embed_dim: int, num_heads: int, depth: int, num_prefix_tokens: int, grid: tuple[int, int]
) -> PositionalEncoding:
    """Instantiate the PE registered as ``name`` (unknown names raise with a did-you-mean hint).

    Args:
        name: registered PE name (see :func:`list_pos_encs`).
        embed_dim: token width C.
        num_heads: attention heads H.
        depth: number of blocks.
        num_prefix_tokens: CLS-like tokens before the patches.
        grid: reference patch grid ``(gh, gw)``.

    Returns:
        The PE module.
    """
    cls = POS_ENCS.get(name)
    return cls(embed_dim=embed_dim, num_heads=num_heads, depth=depth, num_prefix_tokens=num_prefix_tokens, grid=grid)


def list_pos_encs() -> list[str]:
    """Names of every registered positional encoding, sorted."""
    return POS_ENCS.names()


__all__ = ["POS_ENCS", "PositionalEncoding", "build_pos_enc", "list_pos_encs", "patch_positions", "register_pos_enc"]
