"""Named sizes of the popevit ViT; every preset takes every positional encoding (default ``pope``).

A preset is named for its shape, ``vit_p<patch>_w<width>_d<depth>`` (``_conv`` when its default tokeniser is the
convolutional stem):

| preset                 |  px | patch | width | blocks | heads |  MLP | pool | use                                 |
|------------------------|----:|------:|------:|-------:|------:|-----:|------|-------------------------------------|
| ``vit_p8_w32_d2``      |  32 |     8 |    32 |      2 |     2 |   64 | cls  | unit tests (head dim 16)            |
| ``vit_p16_w192_d6``    | 128 |    16 |   192 |      6 |     3 |  384 | mean | CPU-sized runs, the budget recipes  |
| ``vit_p16_w128_d4``    | 128 |    16 |   128 |      4 |     4 |  256 | mean | multi-seed studies on 2 CPU cores   |
| ``vit_p16_w512_d6``    | 224 |    16 |   512 |      6 |     8 | 1024 | mean | the 224-px (GPU-sized) study        |
| ``vit_p8_w64_d4_conv`` |  64 |     8 |    64 |      4 |     2 |  128 | mean | ``popevit demo`` (conv stem)        |
| ``vit_p4_w128_d6``     |  32 |     4 |   128 |      6 |     4 |  256 | cls  | small-image sanity runs (CIFAR)     |

px is the nominal input side. ``vit_p16_w192_d6`` uses MLP 384 = 2 x width, the same ratio as ``vit_p16_w512_d6``
(1024 = 2 x 512), so that it is a scaled-down copy of the 224-px configuration rather than a ViT-Tiny (which has
4 x). All presets have head dim 16-64, divisible by 4 as 2-D RoPE requires. The nominal size is only a suggestion:
``create_model(img_size=...)`` sets the reference grid and any input size divisible by the patch size runs.

:data:`FORMER_NAMES` maps the names the presets had before they were named by shape (``vit_cpu`` ...); artefacts
and archived runs that record them still load, and ``popevit models`` does not list them.
"""

from __future__ import annotations

from popevit.models.spec import MODELS, ModelSpec, register_model
from popevit.models.vit import ViT, ViTConfig

DEFAULT_POS_ENC = "pope"

PRESETS: dict[str, ViTConfig] = {
    "vit_p8_w32_d2": ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_dim=64, pool="cls"),
    "vit_p16_w192_d6": ViTConfig(
        img_size=128, patch_size=16, embed_dim=192, depth=6, num_heads=3, mlp_dim=384, pool="mean"
    ),
    "vit_p16_w128_d4": ViTConfig(
        img_size=128, patch_size=16, embed_dim=128, depth=4, num_heads=4, mlp_dim=256, pool="mean"
    ),
    "vit_p16_w512_d6": ViTConfig(
        img_size=224, patch_size=16, embed_dim=512, depth=6, num_heads=8, mlp_dim=1024, pool="mean"
    ),
    "vit_p8_w64_d4_conv": ViTConfig(
        img_size=64, patch_size=8, embed_dim=64, depth=4, num_heads=2, mlp_dim=128, pool="mean", stem="conv"
    ),
    "vit_p4_w128_d6": ViTConfig(
        img_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4, mlp_dim=256, pool="cls"
    ),
}

# the presets' earlier names, recorded in model.json and config.yaml of existing runs and archives
FORMER_NAMES: dict[str, str] = {
    "vit_tiny": "vit_p8_w32_d2",
    "vit_cpu": "vit_p16_w192_d6",
    "vit_study": "vit_p16_w128_d4",
    "vit_seed": "vit_p16_w512_d6",
    "vit_demo": "vit_p8_w64_d4_conv",
    "vit_cifar": "vit_p4_w128_d6",
}


def build_vit(
    *,
    name: str,
    num_classes: int,
    in_chans: int,
    img_size: int,
    pos_enc: str | None,
    patch_size: int | None,
    dropout: float,
    attn_dropout: float,
    drop_path: float,
    pool: str | None,
    stem: str | None = None,
    distill: bool = False,
    embed_dim: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
    mlp_dim: int | None = None,
    fc_norm: bool = False,
) -> ViT:
    """Build preset ``name`` with the common ``create_model`` options applied on top.

    A new ``embed_dim`` keeps the preset's head width (``num_heads`` follows) and MLP ratio (``mlp_dim`` follows)
    unless those are given too, as timm's ``embed_dim``/``mlp_ratio`` arguments do.
    """
    base = PRESETS[name]
    width = embed_dim or base.embed_dim
    if num_heads is None:
        head_dim = base.embed_dim // base.num_heads
        if width % head_dim:
            nearest = max(1, round(width / head_dim)) * head_dim
            raise ValueError(
                f"embed_dim={width} is not a multiple of {name}'s head width {head_dim}; "
                f"set num_heads too (a divisor of {width}), or use embed_dim={nearest}"
            )
        num_heads = width // head_dim
    if mlp_dim is None:
        mlp_dim = base.mlp_dim * width // base.embed_dim
    cfg = base.replace(
        embed_dim=width,
        depth=depth or base.depth,
        num_heads=num_heads,
        mlp_dim=mlp_dim,
        img_size=img_size,
        in_chans=in_chans,
        num_classes=num_classes,
        pos_enc=pos_enc or DEFAULT_POS_ENC,
        patch_size=patch_size or base.patch_size,
        dropout=dropout,
        attn_dropout=attn_dropout,
        drop_path=drop_path,
        pool=pool or base.pool,
        stem=stem or base.stem,
        distill=distill,
        fc_norm=fc_norm,
    )
    return ViT(cfg)


for _name, _cfg in PRESETS.items():
    register_model(
        _name,
        ModelSpec(
            build=build_vit,
            is_vit=True,
            head="head",
            stem="patch_embed.weight",
            description=f"popevit ViT {_cfg.embed_dim}w x {_cfg.depth}b x {_cfg.num_heads}h, patch {_cfg.patch_size}, "
            f"{_cfg.pool} pool, {_cfg.img_size}px nominal",
        ),
    )
for _old, _new in FORMER_NAMES.items():
    MODELS.add_alias(_old, _new)
