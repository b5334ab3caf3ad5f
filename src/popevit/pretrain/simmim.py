"""SimMIM masked-image modelling for popevit's ViT (Xie et al. 2022, arXiv:2111.09886).

A random subset of the patch embeddings is replaced by one learned mask token before the positional encoding and
the blocks; a linear head predicts the hidden patches' pixels from the encoder's output tokens, and the loss is the
L1 error on the hidden patches only (SimMIM, Sec. 3: random masking, a one-layer prediction head, L1 on raw
pixels). Pixels are the per-image standardised model inputs, so the targets are what fine-tuning will see. The
mask is drawn per image at the model's patch granularity with exactly ``round(ratio * P)`` hidden patches; SimMIM's
32-px mask patches would leave too few mask units on a 128-px image. Hidden patches are also set to 0 (the image
mean) in the input, so a convolutional stem, whose receptive fields overlap neighbouring patches, cannot pass their
pixels to visible tokens (its BatchNorm batch statistics remain a negligible channel).

Only the encoder (the plain :class:`popevit.models.vit.ViT`) is kept after pretraining; the mask token and the
prediction head are discarded, so ``popevit train --init`` loads every weight of the backbone.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from popevit.models.vit import ViT


def random_mask(batch: int, num_patches: int, ratio: float, generator: torch.Generator | None = None) -> Tensor:
    """(B, P) bool mask, True = hidden, with exactly ``round(ratio * P)`` hidden patches per image (at least 1)."""
    k = min(num_patches, max(1, round(ratio * num_patches)))
    order = torch.rand(batch, num_patches, generator=generator).argsort(dim=1)
    return order < k


def patchify(x: Tensor, p: int) -> Tensor:
    """(B, C, H, W) -> (B, P, p*p*C), patches in row-major order like the patch embedding's tokens."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


class SimMIM(nn.Module):
    """Encoder + mask token + linear pixel head. ``forward(x, mask)`` returns the masked-patch L1 loss."""

    def __init__(self, encoder: ViT) -> None:
        super().__init__()
        if not isinstance(encoder, ViT):
            raise TypeError(
                f"SimMIM pretrains popevit's ViT (vit_* models), got {type(encoder).__name__}; "
                "choose a vit_* model in model.name"
            )
        self.encoder = encoder
        c, p = encoder.embed_dim, encoder.patch_size
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.decoder = nn.Linear(c, p * p * encoder.cfg.in_chans)
        for head in (encoder.head, encoder.head_dist):  # unused here: frozen, so DDP sees no unused parameters
            if head is not None:
                head.requires_grad_(False)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"} | {f"encoder.{n}" for n in self.encoder.no_weight_decay()}

    def reconstruct(self, x: Tensor, mask: Tensor) -> Tensor:
        """(B, C, H, W) images and a (B, P) mask -> (B, P, p*p*C) predicted pixels of every patch."""
        b, _, h, w = x.shape
        p = self.encoder.patch_size
        hidden = mask.view(b, 1, h // p, 1, w // p, 1).expand(b, 1, h // p, p, w // p, p).reshape(b, 1, h, w)
        feats = self.encoder.forward_features(x.masked_fill(hidden, 0.0), mask, self.mask_token)
        return self.decoder(feats[:, self.encoder.num_prefix_tokens :])

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        pred = self.reconstruct(x, mask)
        err = (pred.float() - patchify(x, self.encoder.patch_size).float()).abs().mean(dim=-1)  # (B, P)
        m = mask.to(err.dtype)
        return (err * m).sum() / m.sum().clamp_min(1.0)

    def encoder_state_dict(self) -> dict[str, Tensor]:
        """The backbone's weights for ``popevit train --init``, without the classification heads."""
        return {k: v for k, v in self.encoder.state_dict().items() if not k.startswith(("head.", "head_dist."))}
