"""``popevit explain``: a run's model on images -> heatmaps, overlays, galleries and measured faithfulness.

The model is rebuilt from the run's portable artefact and fed exactly as in training (``popevit.data.preprocess``:
head crop, pad to square, resize, standardise), so every heatmap lives in the *preprocessed* image's coordinates. It
is drawn on the preprocessed image, beside the original; lesion masks (phantoms) are pushed through the same crop,
pad and resize (:func:`preprocess_mask`) before they are compared with a map.

Outputs, in ``out`` (default ``RUN/explain/<method>``)::

    overlays/NNN_<name>.png       original | model input | one heatmap overlay per method, with labels and probabilities
    gallery_misclassified.png     the most confident mistakes
    gallery_confident.png         the most confident correct predictions, one row per class
    explanations.csv              path, label, predicted, target, p_<class>... of every explained image
    maps.npz                      the (n, S, S) float16 maps per method, with the paths
    faithfulness.json             with ``faithfulness=True``: deletion/insertion AUC per method vs a random map,
                                  and on images with lesion masks the mask mass share and pointing-game hit rate
                                  vs the masks' area fraction
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from popevit.config import PreprocessConfig
from popevit.io import atomic_write, atomic_write_csv, atomic_write_json

EXPLAIN_DIR = "explain"
FAITHFULNESS = "faithfulness.json"


# ------------------------------------------------------------------------------------------------------ geometry


@dataclass(frozen=True)
class Geometry:
    """The crop, pad and resize that :func:`popevit.data.preprocess.preprocess_image` applies to one image.

    Attributes:
        box: foreground crop ``(top, left, bottom, right)`` in original pixels (the whole image without cropping).
        side: side of the padded square.
        offset: ``(top, left)`` of the crop inside the padded square.
        size: final side S.
        fill: the level the data layer padded the image with (its background).
    """

    box: tuple[int, int, int, int]
    side: int
    offset: tuple[int, int]
    size: int
    fill: float = 0.0

    def apply(self, arr: np.ndarray, fill: float) -> np.ndarray:
        """Crop, pad with ``fill`` and resize a float (H, W) array; returns (S, S) float32."""
        from popevit.data.preprocess import resize

        t, l, b, r = self.box
        crop = np.asarray(arr, np.float32)[t:b, l:r]
        h, w = crop.shape
        if h == w == self.side:
            square = crop
        else:
            square = np.full((self.side, self.side), fill, np.float32)
            square[self.offset[0] : self.offset[0] + h, self.offset[1] : self.offset[1] + w] = crop
        return resize(square, self.size)


def geometry(gray: np.ndarray, cfg: PreprocessConfig) -> Geometry:
    """The crop, pad and resize that the data layer applies to a grayscale (H, W) image.

    The data layer's ``crop_pad_square`` decides the crop from the image content (several passes) and does not
    return it, so the crop is read back from its output: the padded square holds an exact copy of one sub-rectangle
    of ``gray``, centred along the shorter side. Re-implementing the crop here would drift from the data layer;
    locating the copy cannot.
    """
    from popevit.data.preprocess import crop_pad_square

    square = crop_pad_square(np.asarray(gray, np.float32), cfg.crop_foreground)  # (L, L)
    found = _locate(gray, square) or _transposed(_locate(gray.T, square.T))
    if found is None:
        raise RuntimeError(
            "could not locate the preprocessing crop inside the image; popevit.data.preprocess.crop_pad_square "
            "no longer returns an exact crop of the input. Ask for a function that returns its crop box."
        )
    box, offset = found
    fill = float(square[0, 0]) if offset != (0, 0) else 0.0
    return Geometry(box, square.shape[0], offset, cfg.img_size, fill)


def _transposed(found: tuple | None) -> tuple | None:
    if found is None:
        return None
    (t, l, b, r), (top, left) = found
    return (l, t, r, b), (left, top)


def _locate(gray: np.ndarray, square: np.ndarray) -> tuple[tuple[int, int, int, int], tuple[int, int]] | None:
    """Find ``gray[T:T+L, C:C+w]`` copied into ``square[:, left:left+w]`` (full height, columns centred)."""
    gray = np.asarray(gray, np.float32)
    H, W = gray.shape
    side = square.shape[0]
    if side > H:
        return None
    j0 = side // 2  # the centre column is content whatever the width
    col = square[:, j0]
    for T, c in np.argwhere(gray[: H - side + 1] == col[0]):  # candidate (T, c) of the column's first pixel
        if not np.array_equal(gray[T : T + side, c], col):
            continue
        # Square column j shows gray column c - j0 + j; content is the matching run around j0.
        a = j0
        while a > 0 and c - j0 + a - 1 >= 0 and np.array_equal(square[:, a - 1], gray[T : T + side, c - j0 + a - 1]):
            a -= 1
        b = j0 + 1
        while b < side and c - j0 + b < W and np.array_equal(square[:, b], gray[T : T + side, c - j0 + b]):
            b += 1
        for w in range(b - a, 0, -1):  # the padding may repeat an edge column: keep the centred run
            left = (side - w) // 2
            if a <= left and left + w <= b:
                return (int(T), int(c - j0 + left), int(T + side), int(c - j0 + left + w)), (0, left)
    return None


def preprocess_mask(img: Image.Image, mask: Image.Image | np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """A lesion mask in the model input's geometry.

    Args:
        img: the decoded image the mask belongs to (its content decides the crop).
        mask: the (H, W) mask, nonzero inside the lesion.
        cfg: the run's preprocessing settings.

    Returns:
        bool (S, S) mask aligned with ``preprocess_image(img, cfg)``.
    """
    from popevit.data.decode import to_gray

    gray = to_gray(img)
    m = (np.asarray(mask.convert("L") if isinstance(mask, Image.Image) else mask) > 0).astype(np.float32)
    if m.shape != gray.shape:
        raise ValueError(f"mask shape {m.shape} differs from image shape {gray.shape}; pass the image's own mask")
    return geometry(gray, cfg).apply(m, 0.0) >= 0.5


# ------------------------------------------------------------------------------------------------------ inputs


@dataclass
class Item:
    """One image to explain: its path, true class index (-1 when unknown), original and model-input pixels."""

    path: str
    label: int
    original: np.ndarray  # (H, W) float32 grayscale in native range
    pre: np.ndarray  # (S, S) uint8, what the model sees before standardisation
    mask: np.ndarray | None = None  # (S, S) bool lesion mask in model-input geometry
    extra: dict[str, Any] = field(default_factory=dict)


def load_item(path: str | Path, label: int, cfg: PreprocessConfig) -> Item:
    """Decode, preprocess and (for phantoms) attach the aligned lesion mask of one image.

    The model input is decoded as the training cache decodes it (:func:`popevit.data.preprocess.decode_for_model`:
    JPEGs at a DCT draft scale), so explanations see the pixels that training and evaluation saw. The original is
    shown at the file's own size; a mask drawn on it is resized (nearest) to the drafted image first.
    """
    from popevit.data.decode import decode_bytes, read_bytes, to_gray
    from popevit.data.phantoms import mask_path
    from popevit.data.preprocess import decode_for_model, preprocess_image

    data = read_bytes(Path(path))
    img = decode_for_model(data, path, cfg)
    full = decode_bytes(data, path) if img.format == "JPEG" else img  # only JPEGs are drafted
    pre = preprocess_image(img, cfg)
    mask = None
    if (mp := mask_path(Path(path))) is not None:
        m = Image.open(mp)
        if m.size == full.size != img.size:
            m = m.convert("L").resize(img.size, Image.Resampling.NEAREST)
        mask = preprocess_mask(img, m, cfg)
    return Item(str(path), label, to_gray(full), pre, mask)


def _image_labels(
    images: Sequence[str | Path], classes: list[str]
) -> tuple[list[str], np.ndarray, set[str], list[tuple[Path, str]]]:
    """Paths given one by one (files or folders); the label is the parent folder's name when it is a class.

    Returns:
        ``(paths, labels, named, skipped)``: every image, (n,) labels (-1 unknown), the paths named one by one
        (a file among them that cannot be decoded is an error; one found in a folder is skipped), and the files in
        the folders that are not images, with the reason.
    """
    from popevit.data.discover import classify_file

    paths: list[str] = []
    named: set[str] = set()
    skipped: list[tuple[Path, str]] = []
    for p in map(Path, images):
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if not f.is_file() or "masks" in f.relative_to(p).parts:
                    continue
                reason = classify_file(f)
                if reason is None:
                    paths.append(str(f))
                else:
                    skipped.append((f, reason))
        elif p.is_file():
            paths.append(str(p))
            named.add(str(p))
        else:
            raise FileNotFoundError(f"image {str(p)!r} not found; pass existing files or folders to --images")
    if not paths:
        raise ValueError(f"no images found in {[str(i) for i in images]}")
    labels = [classes.index(Path(p).parent.name) if Path(p).parent.name in classes else -1 for p in paths]
    return paths, np.array(labels, dtype=np.int64), named, skipped


def _select(
    proba: np.ndarray, y: np.ndarray, *, max_images: int, per_class: int, seed: int
) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
    """Which ``max_images`` images to explain: up to half of them the most confident mistakes, then the most
    confident correct ones per class (round-robin over classes), then a seeded random fill.

    Returns:
        ``(explained, mistakes, confident_by_class)`` row indices; the last two are subsets of the first.
    """
    pred, conf = proba.argmax(1), proba.max(1)
    wrong = np.flatnonzero((y >= 0) & (pred != y))
    mistakes = wrong[np.argsort(-conf[wrong], kind="stable")][: max(1, max_images // 2)]
    ranked = {}
    for k in range(proba.shape[1]):
        right = np.flatnonzero((pred == y) & (y == k))
        ranked[k] = right[np.argsort(-conf[right], kind="stable")][:per_class]
    chosen = mistakes.tolist()[:max_images]
    for rank in range(per_class):
        for k in ranked:
            if rank < len(ranked[k]) and len(chosen) < max_images:
                chosen.append(int(ranked[k][rank]))
    rest = np.setdiff1d(np.arange(len(y)), chosen)
    fill = max(0, max_images - len(chosen))
    chosen += sorted(np.random.default_rng(seed).permutation(rest)[:fill].tolist())
    keep = set(chosen)
    confident = {k: np.array([r for r in v if r in keep], dtype=np.int64) for k, v in ranked.items()}
    return np.array(chosen, dtype=np.int64), np.array([r for r in mistakes if r in keep], dtype=np.int64), confident


# ------------------------------------------------------------------------------------------------------ driver


@dataclass
class ExplainResult:
    """What :func:`explain_run` wrote and measured."""

    out: Path
    methods: list[str]
    paths: list[str]
    figures: list[Path]
    faithfulness: dict[str, Any] | None
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # files not explained, with the reason


def _targets(target: str, pred: np.ndarray, y: np.ndarray, paths: list[str], classes: list[str]) -> np.ndarray:
    if target == "predicted":
        return pred
    if target == "true":
        unknown = [paths[i] for i in np.flatnonzero(y < 0)[:3]]
        if unknown:
            raise ValueError(
                f"--target true needs labels, but {unknown} have none (their folder is not a class); "
                "use --target predicted or put images in class-named folders"
            )
        return y
    if target in classes:
        return np.full_like(pred, classes.index(target))
    from popevit.registry import did_you_mean

    raise ValueError(
        f"unknown target {target!r}{did_you_mean(target, classes)}; use 'predicted', 'true' or a class of the "
        f"model ({', '.join(classes)})"
    )


def resolve_methods(method: str | Sequence[str], model: torch.nn.Module) -> list[str]:
    """Method names from ``"rollout"``, ``"rollout,gradcam"``, a list, or ``"all"`` (every method for the model)."""
    from popevit.explain.methods import METHODS, methods_for

    names = [m.strip() for m in method.split(",")] if isinstance(method, str) else [m.strip() for m in method]
    usable = methods_for(model)
    if names == ["all"]:
        return [m for m in usable if m != "random"]
    for m in names:
        METHODS.get(m)  # unknown names raise with a did-you-mean hint
        if m not in usable:
            raise ValueError(
                f"method {m!r} does not apply to {type(model).__name__} (it has no attention to roll out); "
                f"use one of {[u for u in usable if u != 'random']}"
            )
    return list(dict.fromkeys(names))


def _batched_maps(
    model: torch.nn.Module, x: torch.Tensor, target: np.ndarray, method: str, batch_size: int, options: dict
) -> torch.Tensor:
    from popevit.explain.methods import explain_batch
    from popevit.progress import track

    dev = next(model.parameters()).device
    t = torch.as_tensor(target, dtype=torch.long)
    out = [
        explain_batch(model, x[i : i + batch_size].to(dev), t[i : i + batch_size], method, **options)
        for i in track(range(0, len(x), batch_size), f"{method} maps of {len(x)} images")
    ]
    return torch.cat(out)  # (n, S, S)


def explain_run(
    run_dir: str | Path,
    *,
    images: Sequence[str | Path] | None = None,
    data: str | Path | None = None,
    manifest: str | Path | None = None,
    split: str | None = "test",
    method: str | Sequence[str] = "rollout",
    target: str = "predicted",
    out: str | Path | None = None,
    faithfulness: bool = False,
    max_images: int = 24,
    per_class: int = 4,
    batch_size: int = 32,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    steps: int = 20,
    device: str | None = None,
    seed: int = 0,
) -> ExplainResult:
    """Explain a trained run's predictions.

    Args:
        run_dir: run folder with ``model.safetensors`` + ``model.json``.
        images: image files or folders (labels from class-named parent folders, else unknown).
        data: an image folder in any layout the data layer reads (the run's class mapping applies).
        manifest: a manifest CSV; ``split`` selects rows. With none of ``images``/``data``/``manifest`` the run's
            own ``manifest.csv`` ``split`` is used.
        split: manifest split.
        method: ``"rollout"``, ``"grad-rollout"``, ``"gradcam"``, a comma list, or ``"all"``; the first one
            drives the galleries.
        target: class to explain: ``"predicted"``, ``"true"`` or a class name.
        out: output folder (default ``RUN/explain/<first method>``).
        faithfulness: also measure deletion/insertion AUC (and mask mass/pointing game where masks exist) and
            write ``faithfulness.json``.
        max_images: images explained (mistakes and confident ones first, then a seeded random fill); faithfulness
            is measured on all of them.
        per_class: confident correct images per class in the gallery.
        batch_size: images per explanation batch.
        head_fusion: rollout head fusion (``mean``/``max``/``min``).
        discard_ratio: rollout discard ratio.
        steps: deletion/insertion curve steps.
        device: ``"cpu"``, ``"cuda"``...; default CUDA when available.
        seed: selection and baseline seed.

    Returns:
        :class:`ExplainResult`.
    """
    from popevit.artifact import load_artifact
    from popevit.data.decode import DecodeError
    from popevit.data.preprocess import to_tensor
    from popevit.evaluation.predictions import resolve_device
    from popevit.explain import overlay
    from popevit.progress import track

    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    run_dir = Path(run_dir)
    dev = resolve_device(device)
    model, meta = load_artifact(run_dir, map_location=dev)
    classes, cfg = meta.classes, meta.preprocess
    methods = resolve_methods(method, model)
    options = {"head_fusion": head_fusion, "discard_ratio": discard_ratio}

    named: set[str] = set()
    if images is not None:
        if data is not None or manifest is not None:
            raise ValueError("pass either images, data or manifest, not several")
        paths, y, named, skipped = _image_labels(images, classes)
    else:
        from popevit.evaluation.evaluate import load_eval_samples

        paths, y, source = load_eval_samples(run_dir, classes, data=data, manifest=manifest, split=split)
        skipped = [(Path(p), reason) for p, reason in source["skipped"]]

    # 1. predict everything (cheap), 2. explain a selection: mistakes, confident hits, random fill.
    items_all, kept = [], []
    pairs = enumerate(zip(paths, y, strict=True))
    for i, (p, lbl) in track(pairs, f"loading {len(paths)} images", len(paths)):
        try:
            items_all.append(load_item(p, int(lbl), cfg))
            kept.append(i)
        except DecodeError as err:
            if p in named:  # a file the user named: refuse it rather than explain without it
                raise
            skipped.append((Path(p), err.reason))
    if not items_all:
        raise ValueError(f"none of the {len(paths)} images could be read (e.g. {skipped[0][0]}: {skipped[0][1]})")
    paths, y = [paths[i] for i in kept], y[kept]
    x_all = torch.stack([to_tensor(it.pre, cfg) for it in items_all])  # (n, C, S, S)
    with torch.inference_mode():
        proba = torch.cat([model(xb.to(dev)).float().softmax(-1).cpu() for xb in x_all.split(batch_size)]).numpy()
    chosen, mistakes, confident = _select(proba, y, max_images=max_images, per_class=per_class, seed=seed)
    pos = {int(r): i for i, r in enumerate(chosen)}
    items = [items_all[i] for i in chosen]
    x = x_all[chosen]
    pred = proba[chosen].argmax(1)
    tgt = _targets(target, pred, y[chosen], [it.path for it in items], classes)
    maps = {m: _batched_maps(model, x, tgt, m, batch_size, options if m == "rollout" else {}) for m in methods}

    out_dir = Path(out) if out is not None else run_dir / EXPLAIN_DIR / methods[0]
    (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
    figures: list[Path] = []
    for i, it in enumerate(track(items, f"drawing {len(items)} overlays")):
        fig_path = out_dir / "overlays" / f"{i:03d}_{Path(it.path).stem}.png"
        overlay.save_explanation(
            fig_path, it, {m: maps[m][i].numpy() for m in methods}, proba[chosen[i]], classes, int(tgt[i])
        )
        figures.append(fig_path)
    gal = [it for it in items]
    primary = maps[methods[0]].numpy()
    figures.append(
        overlay.save_gallery(
            out_dir / "gallery_misclassified.png",
            [(gal[pos[int(r)]], primary[pos[int(r)]], proba[r]) for r in mistakes],
            classes, title=f"Most confident mistakes ({methods[0]})", ncols=4,
        )
    )  # fmt: skip
    figures.append(
        overlay.save_confident_gallery(
            out_dir / "gallery_confident.png",
            {classes[k]: [(gal[pos[int(r)]], primary[pos[int(r)]], proba[r]) for r in rows] for k, rows in
             confident.items()},
            classes, title=f"Most confident correct predictions per class ({methods[0]})",
        )
    )  # fmt: skip
    _write_table(out_dir / "explanations.csv", items, proba[chosen], tgt, classes)
    arrays = {m.replace("-", "_"): maps[m].numpy().astype(np.float16) for m in methods}
    paths_arr = np.array([it.path for it in items])

    def write_maps(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object: given a name, numpy would append ".npz" to it
            np.savez_compressed(fh, paths=paths_arr, **arrays)

    atomic_write(out_dir / "maps.npz", write_maps)

    report = None
    if faithfulness:
        report = measure_faithfulness(model, x, tgt, maps, items, steps=steps, seed=seed, batch_size=batch_size)
        report.update({"run": str(run_dir), "model": meta.name, "target": target, "images": len(items)})
        atomic_write_json(out_dir / FAITHFULNESS, report)
    return ExplainResult(out_dir, methods, [it.path for it in items], figures, report, skipped)


def measure_faithfulness(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: np.ndarray,
    maps: dict[str, torch.Tensor],
    items: Sequence[Item],
    *,
    steps: int = 20,
    seed: int = 0,
    batch_size: int = 64,
    random_repeats: int = 3,
) -> dict[str, Any]:
    """Deletion/insertion AUC per method and for random maps; mask mass and pointing game where masks exist.

    Args:
        model: eval-mode classifier.
        x: (n, C, S, S) inputs.
        target: (n,) explained classes.
        maps: method name -> (n, S, S) maps.
        items: the n images (for their masks).
        steps: curve steps.
        seed: random-map and tie-breaking seed.
        batch_size: forward chunk size.
        random_repeats: random maps averaged for the baseline.

    Returns:
        ``{"methods": {name: {...}}, "random": {...}, "mask": {...} | None}`` with means and per-image values.
    """
    from popevit.explain.faithfulness import area_fraction, deletion_insertion, mask_mass, pointing_game
    from popevit.explain.methods import explain_batch, native_grid

    t = torch.as_tensor(target, dtype=torch.long)
    dev = next(model.parameters()).device

    def curves(m: torch.Tensor) -> dict[str, Any]:
        c = deletion_insertion(model, x, m, t, steps=steps, seed=seed, batch_size=batch_size)
        return {"deletion_auc": float(c.deletion_auc.mean()), "insertion_auc": float(c.insertion_auc.mean()),
                "deletion_auc_per_image": c.deletion_auc.round(5).tolist(),
                "insertion_auc_per_image": c.insertion_auc.round(5).tolist()}  # fmt: skip

    grid = native_grid(model, x.to(dev))
    randoms = [
        explain_batch(model, x.to(dev), t, "random", grid=grid, seed=seed + 1 + r) for r in range(random_repeats)
    ]
    result: dict[str, Any] = {"methods": {m: curves(v) for m, v in maps.items()}}
    rnd = [curves(r) for r in randoms]
    result["random"] = {
        "deletion_auc": float(np.mean([r["deletion_auc"] for r in rnd])),
        "insertion_auc": float(np.mean([r["insertion_auc"] for r in rnd])),
        "repeats": random_repeats,
        "grid": list(grid),
    }
    with_mask = [i for i, it in enumerate(items) if it.mask is not None and it.mask.any()]
    result["mask"] = None
    if with_mask:
        masks = torch.from_numpy(np.stack([items[i].mask for i in with_mask]))  # (m, S, S) bool
        area = area_fraction(masks)
        result["mask"] = {"images": len(with_mask), "area_fraction": float(area.mean()), "methods": {}}
        for name, v in {**maps, "random": randoms[0]}.items():
            sub = v[with_mask]
            result["mask"]["methods"][name] = {
                "mass_share": float(mask_mass(sub, masks).mean()),
                "pointing_hit_rate": float(pointing_game(sub, masks).mean()),
            }
    result["steps"] = steps
    return result


def _write_table(path: Path, items: Sequence[Item], proba: np.ndarray, target: np.ndarray, classes: list[str]) -> None:
    rows: list[list[Any]] = [["path", "label", "predicted", "target", *[f"p_{c}" for c in classes]]]
    for it, p, t in zip(items, proba, target, strict=True):
        label = classes[it.label] if it.label >= 0 else ""
        rows.append([it.path, label, classes[int(p.argmax())], classes[int(t)], *(f"{v:.6g}" for v in p)])
    atomic_write_csv(path, rows)
