"""Typed experiment configs: YAML gives the values, ``--set key=value`` overrides them, the resolved config is saved.

One source of truth: every knob of a run lives in :class:`ExperimentConfig`. Unknown keys are errors that name
the key and the nearest valid one; wrong types name the field. Reading the YAML files, ``base:`` inheritance and the
overrides live in :mod:`popevit.config_sources`; this module holds the schema and validates the merged result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from popevit.config_sources import ConfigError, apply_overrides, read_yaml, resolve_bases
from popevit.registry import did_you_mean


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PreprocessConfig(StrictModel):
    """Deterministic preprocessing, identical for every class (see ``popevit.data.preprocess``)."""

    img_size: int = Field(128, ge=8, description="side of the square model input, pixels")
    in_chans: Literal[1, 3] = Field(1, description="1 = grayscale; 3 = grayscale replicated for RGB backbones")
    crop_foreground: bool = Field(True, description="crop to the head before padding to square")
    clip_percentiles: tuple[float, float] = Field((0.5, 99.5), description="intensity clip before standardising")
    normalize: Literal["image", "fixed"] = Field(
        "image",
        description="image = per-image zero mean, unit variance; fixed = (x - 0.5) / 0.25 on the 0..1 image, the same "
        "affine map for every image",
    )
    crop: Literal["head", "max_fraction"] = Field(
        "head",
        description="head = find the head against the background level (largest component, margin, frames "
        "stripped) and pad with the background level; max_fraction = the bounding box of the pixels above 10% of "
        "the image's maximum, padded with 0, as simple recipes do",
    )
    jpeg_draft: bool = Field(
        True,
        description="decode large JPEGs in the DCT domain at >= 2x img_size (fast); false decodes every image at "
        "full size, as simple recipes do",
    )
    rescale: bool = Field(
        True,
        description="stretch each image's grey levels (clip_percentiles) to 0..255; false keeps the 8-bit grey "
        "levels as decoded (8-bit images only)",
    )
    head_mask: bool = Field(
        False,
        description="crop tight to the head and set everything outside it to black, so that the background, frame "
        "and text labels cannot carry the image's source",
    )
    head_erode: float = Field(
        0.0, ge=0, lt=0.5, description="with head_mask: shrink the mask by this share of the head's size (scalp, skull)"
    )

    @model_validator(mode="after")
    def _check_head(self) -> PreprocessConfig:
        if self.head_erode and not self.head_mask:
            raise ValueError("head_erode shrinks the head mask, but head_mask is false; set head_mask: true")
        return self


class DomainConfig(StrictModel):
    """Contrast and acquisition randomisation (see :class:`popevit.data.transforms.DomainRandomization`).

    Each effect is drawn per image with probability ``p`` when it is switched on (a true flag or a non-zero
    strength), so that the model cannot tell the source of an image by its MRI sequence, scanner or file encoding.
    """

    p: float = Field(0.5, ge=0, le=1, description="probability that each switched-on effect is applied to an image")
    curve: bool = Field(False, description="random piecewise-linear intensity curve (lookup table)")
    curve_points: int = Field(6, ge=2, description="control points of the random curve")
    curve_nonmonotone: float = Field(0.5, ge=0, le=1, description="share of the random curves that are non-monotone")
    invert: bool = Field(False, description="intensity inversion 1 - x (T1-like <-> T2-like contrast)")
    hist_match: bool = Field(False, description="match the histogram of another image of the batch")
    bias_field: float = Field(0.0, ge=0, description="max std of a smooth multiplicative log bias field")
    blur: float = Field(0.0, ge=0, description="max Gaussian blur sigma, pixels")
    noise: float = Field(0.0, ge=0, description="max std of additive Gaussian noise on the 0..1 image")
    resample: float = Field(1.0, ge=1, description="max factor of a down-then-up resampling (1 = off)")
    jpeg: tuple[int, int] | None = Field(
        None, description="JPEG quality range of a simulated re-encoding, e.g. [30, 90]"
    )

    @property
    def active(self) -> bool:
        return self.p > 0 and (
            self.curve or self.invert or self.hist_match or self.bias_field > 0 or self.blur > 0 or self.noise > 0
            or self.resample > 1 or self.jpeg is not None
        )  # fmt: skip

    @model_validator(mode="after")
    def _check_jpeg(self) -> DomainConfig:
        if self.jpeg is not None and not 1 <= self.jpeg[0] <= self.jpeg[1] <= 100:
            raise ValueError(f"jpeg quality range must be 1 <= low <= high <= 100, got {list(self.jpeg)}")
        return self


class AugmentConfig(StrictModel):
    """Training-only augmentation; validation and test transforms are deterministic."""

    enabled: bool = True
    rotation: float = Field(10.0, ge=0, description="max |degrees| of random rotation")
    translate: float = Field(0.1, ge=0, le=1, description="max translation as a fraction of the side")
    scale: tuple[float, float] = (0.9, 1.1)
    shear: float = Field(0.0, ge=0, description="max |degrees| of shear")
    hflip: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip")
    random_resized_crop: tuple[float, float] | None = Field(
        None, description="area range, e.g. [0.7, 1.0]; off if null"
    )
    brightness: float = Field(0.0, ge=0, description="max additive brightness shift (in std units)")
    contrast: float = Field(0.0, ge=0, description="max relative contrast change")
    gamma: float = Field(0.0, ge=0, description="max |log gamma|")
    noise_std: float = Field(0.0, ge=0, description="std of additive Gaussian noise (in std units)")
    mixup: float = Field(0.0, ge=0, description="mixup Beta(alpha, alpha) of the batch (Zhang et al. 2018); 0 = off")
    cutmix: float = Field(0.0, ge=0, description="cutmix Beta(alpha, alpha) (Yun et al. 2019); 0 = off")
    mix_prob: float = Field(1.0, ge=0, le=1, description="probability that a batch is mixed at all")
    mix_switch_prob: float = Field(0.5, ge=0, le=1, description="probability of cutmix over mixup when both are on")
    domain: DomainConfig = Field(DomainConfig(), description="contrast and acquisition randomisation")

    @property
    def mixing(self) -> bool:
        """True when mixup or cutmix is on (applied per batch in the training step, not in the loader)."""
        return self.enabled and (self.mixup > 0 or self.cutmix > 0) and self.mix_prob > 0


class DataConfig(StrictModel):
    dataset: Literal["folder", "cifar10", "cifar100"] = Field(
        "folder", description="folder = MRI image folder or manifest; cifar10/100 = torchvision CIFAR"
    )
    download: bool = Field(True, description="CIFAR only: download into data.data when missing (needs network)")
    data: Path | None = Field(None, description="image folder (Kaggle layout); split into a manifest automatically")
    manifest: Path | None = Field(None, description="manifest CSV from `popevit data split`")
    class_map: dict[str, str] | None = Field(None, description="numeric folder -> class name, e.g. {'0': 'pituitary'}")
    classes: list[str] | None = Field(None, description="keep only these classes (e.g. the 3 tumor classes)")
    binary: bool = Field(False, description="merge every tumor class into 'tumor' (vs 'notumor')")
    split_seed: int = 0
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    batch_size: int = Field(32, ge=1)
    sampling: Literal["shuffle", "source_balanced"] = Field(
        "shuffle",
        description="shuffle = every training image once per epoch; source_balanced = as many draws per epoch, each "
        "source of a manifest of several (data split --add) drawn equally often, with replacement",
    )
    num_workers: int = Field(0, ge=0, description="DataLoader workers (0 = main process)")
    cache_dir: Path | None = Field(None, description="decode-once cache; default: $POPEVIT_CACHE or ~/.cache/popevit")
    preprocess: PreprocessConfig = PreprocessConfig()
    augment: AugmentConfig = AugmentConfig()


class DistillConfig(StrictModel):
    """Knowledge distillation through DeiT's distillation token (Touvron et al. 2021, arXiv:2012.12877, Sec. 4).

    The teacher is a finished popevit run folder (any registered model, e.g. a ResNet18 trained on the same split);
    it sees the same augmented batch, frozen, in eval mode. Its compute counts toward the student's budget.
    """

    teacher: Path = Field(..., description="run folder of the teacher (holds model.safetensors + model.json)")
    mode: Literal["hard", "soft"] = Field("hard", description="hard: CE to the teacher's arg-max; soft: KL at tau")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the distillation loss (1 - alpha: true labels)")
    tau: float = Field(1.0, gt=0, description="softmax temperature of the soft mode")


class ModelConfig(StrictModel):
    name: str = Field("vit_p16_w192_d6", description="registered model (`popevit models`)")
    pos_enc: str | None = Field("pope", description="positional encoding for ViT models; ignored by CNNs")
    patch_size: int | None = Field(None, description="override the preset's patch size")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout before the head and in MLPs")
    attn_dropout: float = Field(0.0, ge=0, lt=1)
    drop_path: float = Field(0.0, ge=0, lt=1, description="stochastic depth rate")
    pool: Literal["cls", "mean"] | None = Field(None, description="override the preset's pooling")
    stem: Literal["patch", "conv", "res"] | None = Field(
        None, description="ViT tokeniser: patchify conv, conv stem or residual conv stem (popevit.models.stem)"
    )
    embed_dim: int | None = Field(None, ge=4, description="override the ViT preset's width (heads and MLP follow)")
    depth: int | None = Field(None, ge=1, description="override the ViT preset's number of blocks")
    num_heads: int | None = Field(None, ge=1, description="override the ViT preset's attention heads")
    mlp_dim: int | None = Field(None, ge=1, description="override the ViT preset's MLP hidden width")
    fc_norm: bool = Field(
        False, description="ViT: final LayerNorm on the pooled feature, not on each token before pooling (timm fc_norm)"
    )
    pretrained: Path | None = Field(None, description="local .safetensors/.pth weights")
    freeze_backbone: bool = Field(False, description="train the head only")
    distill: DistillConfig | None = Field(None, description="distillation token + teacher (popevit ViTs only)")

    @model_validator(mode="after")
    def _check_distill(self) -> ModelConfig:
        if self.freeze_backbone and self.distill is not None:
            raise ValueError(
                "model.freeze_backbone trains the class head only, so model.distill's distillation head would stay "
                "random and still be averaged into every prediction; use one of the two"
            )
        return self


class OptimConfig(StrictModel):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9
    warmup_epochs: float = Field(5.0, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    schedule_clock: Literal["steps", "time"] = Field(
        "steps",
        description="what the warm-up and decay run over: the steps of train.max_epochs, or, with time, whichever "
        "is further along of those steps and the elapsed share of train.max_minutes, so that the schedule ends at the "
        "wall-clock cap on a slower machine instead of being cut off mid-decay",
    )
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="final lr as a fraction of lr")
    grad_clip: float | None = Field(1.0, description="max gradient norm; null disables clipping")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    layer_decay: float | None = Field(
        None,
        gt=0,
        le=1,
        description="layer-wise lr decay for fine-tuning (BEiT): block l of L gets lr * decay^(L - l); null = off",
    )
    class_weighted: bool = Field(True, description="class-weighted cross-entropy, weights from the training split")


class TrainConfig(StrictModel):
    seed: int = Field(0, ge=0, lt=2**32, description="training seed (numpy accepts 0 .. 2**32 - 1)")
    max_epochs: int = Field(30, ge=1)
    max_minutes: float | None = Field(
        None,
        gt=0,
        description="wall-clock cap on training (equal-budget comparisons). The lr schedule spans max_epochs unless "
        "optim.schedule_clock=time; a capped run cannot be extended with --resume",
    )
    patience: int | None = Field(8, description="early-stopping patience in epochs; null disables")
    monitor: Literal["val/auroc_macro", "val/loss", "val/acc"] = "val/auroc_macro"
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: int | Literal["auto"] = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: Literal["auto", "32", "bf16-mixed", "16-mixed"] = Field("auto", description="auto = bf16 on GPU")
    deterministic: bool = True
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    log_every_n_steps: int = 10
    progress_bar: bool = True
    threads: int | None = Field(None, description="torch CPU threads; default: all cores")
    channels_last: bool = Field(
        False,
        description="train with the weights in channels-last memory: on CPU a ResNet18 step 1.16x and a residual-stem "
        "ViT step 1.09-1.14x faster, a plain (patchify) ViT unchanged (BENCHMARKS.md). Off by default: it changes "
        "float rounding, hence the numbers of a run, and the recorded results were made without it",
    )
    ema_decay: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="EMA of the weights (validated, checkpointed and exported); null = off. Keep its horizon "
        "1 / (1 - decay) well below the run's optimizer steps: 0.998 over ~1000 steps gave a collapsed model",
    )
    ema_warmup: bool = Field(
        False,
        description="ramp the EMA decay with the update count n as min(ema_decay, (1 + n) / (10 + n)), the "
        "num_updates rule of TensorFlow's ExponentialMovingAverage, so that the average follows the weights early "
        "in a short run; needs ema_decay",
    )

    @model_validator(mode="after")
    def _check_ema(self) -> TrainConfig:
        if self.devices != "auto" and self.devices < 1:
            raise ValueError(f"train.devices must be >= 1 or auto, got {self.devices}; e.g. --devices 1")
        if self.ema_warmup and self.ema_decay is None:
            raise ValueError("train.ema_warmup ramps the EMA decay, but train.ema_decay is null; set e.g. 0.99")
        return self


class PretrainConfig(StrictModel):
    """Self-supervised pretraining on the training images of the split (``popevit pretrain``; ignored by train)."""

    method: Literal["simmim"] = Field("simmim", description="masked-image modelling (Xie et al. 2022)")
    mask_ratio: float = Field(0.6, gt=0, lt=1, description="fraction of patches hidden per image")


class ExperimentConfig(StrictModel):
    """A whole experiment. ``configs/experiments/*.yaml``, merged over their ``configs/base/`` files, are instances."""

    name: str = "experiment"
    description: str = ""
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    pretrain: PretrainConfig = PretrainConfig()

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        if self.data.binary and self.data.classes is not None:
            raise ValueError("data.binary and data.classes cannot both be set; pick one task definition")
        if abs(sum(self.data.ratios) - 1.0) > 1e-6:
            raise ValueError(f"data.ratios must sum to 1, got {self.data.ratios}")
        if self.optim.schedule_clock == "time" and self.train.max_minutes is None:
            raise ValueError(
                "optim.schedule_clock=time runs the lr schedule over the wall-clock budget, but train.max_minutes is "
                "null; set train.max_minutes (e.g. 30) or use optim.schedule_clock=steps"
            )
        return self


def _known_keys(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    """Field names valid at ``loc`` (a path into nested sections)."""
    cls: Any = model
    for part in loc:
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            break
        cls = field.annotation
    return list(cls.model_fields) if hasattr(cls, "model_fields") else []


def _explain(err: ValidationError, source: str) -> ConfigError:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc) or "<root>"
        if e["type"] == "extra_forbidden":
            known = _known_keys(ExperimentConfig, loc[:-1])
            hint = did_you_mean(str(loc[-1]), known)
            lines.append(f"unknown key {key!r}{hint} (valid here: {', '.join(known)})")
        else:
            lines.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
    return ConfigError(f"invalid config {source}:\n  " + "\n  ".join(lines))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load and validate a YAML experiment config, then apply ``key=value`` overrides.

    Args:
        path: YAML file, merged over the files its ``base:`` names (:func:`resolve_bases`); ``None`` starts from
            the defaults.
        overrides: dotted ``key=value`` strings, values parsed as YAML (``optim.lr=1e-3``, ``data.classes=[a,b]``).

    Returns:
        The validated config.
    """
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"config file {str(path)!r} not found; see configs/experiments/ for the shipped experiments"
            )
        raw = read_yaml(path) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"config {str(path)!r} must be a YAML mapping, got {type(raw).__name__}")
        raw = resolve_bases(raw, path)
        source = str(path)
    raw = apply_overrides(raw, overrides or [])
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise _explain(err, source) from None


def dump_config(cfg: BaseModel) -> str:
    """YAML text of a config, loadable again by :func:`load_config`."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
