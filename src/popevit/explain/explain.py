"""``popevit explain``: a run's model on images -> heatmaps, overlays, galleries and measured faithfulness.

The model is rebuilt from the run's portable artefact and fed exactly as in training (``popevit.data.preprocess``:
head crop, pad to square, resize, standardise), so every heatmap lives in the *preprocessed* image's coordinates. It
is drawn on the preprocessed image, beside the original; lesion masks (phantoms) are pushed through the same crop,
pad and resize (:mod:`popevit.explain.inputs`) before they are compared with a map.

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

from popevit.artifact import load_artifact
from popevit.config import PreprocessConfig
from popevit.data.decode import DecodeError
from popevit.data.preprocess import to_tensor
from popevit.evaluation.predictions import resolve_device
from popevit.evaluation.source import EvalSource, load_eval_samples
from popevit.explain import overlay
from popevit.explain.faithfulness import area_fraction, deletion_insertion, mask_mass, pointing_game
from popevit.explain.inputs import Item, image_labels, load_item
from popevit.explain.methods import METHODS, explain_batch, methods_for, native_grid
from popevit.io import atomic_write, atomic_write_csv, atomic_write_json
from popevit.progress import track
from popevit.registry import did_you_mean

EXPLAIN_DIR = "explain"
FAITHFULNESS = "faithfulness.json"


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
    raise ValueError(
        f"unknown target {target!r}{did_you_mean(target, classes)}; use 'predicted', 'true' or a class of the "
        f"model ({', '.join(classes)})"
    )


def resolve_methods(method: str | Sequence[str], model: torch.nn.Module) -> list[str]:
    """Method names from ``"rollout"``, ``"rollout,gradcam"``, a list, or ``"all"`` (every method for the model)."""
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
    dev = next(model.parameters()).device
    t = torch.as_tensor(target, dtype=torch.long)
    out = [
        explain_batch(model, x[i : i + batch_size].to(dev), t[i : i + batch_size], method, **options)
        for i in track(range(0, len(x), batch_size), f"{method} maps of {len(x)} images")
    ]
    return torch.cat(out)  # (n, S, S)


def _figures(
    out_dir: Path,
    items: list[Item],
    maps: dict[str, torch.Tensor],
    proba: np.ndarray,
    chosen: np.ndarray,
    mistakes: np.ndarray,
    confident: dict[int, np.ndarray],
    target: np.ndarray,
    classes: list[str],
) -> list[Path]:
    """One overlay per explained image, then the galleries of mistakes and of confident hits (first method)."""
    methods = list(maps)
    figures: list[Path] = []
    for i, it in enumerate(track(items, f"drawing {len(items)} overlays")):
        fig_path = out_dir / "overlays" / f"{i:03d}_{Path(it.path).stem}.png"
        overlay.save_explanation(
            fig_path, it, {m: maps[m][i].numpy() for m in methods}, proba[chosen[i]], classes, int(target[i])
        )
        figures.append(fig_path)
    pos = {int(r): i for i, r in enumerate(chosen)}
    primary = maps[methods[0]].numpy()

    def entry(r: int) -> overlay.Entry:
        return items[pos[int(r)]], primary[pos[int(r)]], proba[r]

    figures.append(
        overlay.save_gallery(
            out_dir / "gallery_misclassified.png", [entry(r) for r in mistakes], classes,
            title=f"Most confident mistakes ({methods[0]})", ncols=4,
        )
    )  # fmt: skip
    figures.append(
        overlay.save_confident_gallery(
            out_dir / "gallery_confident.png", {classes[k]: [entry(r) for r in rows] for k, rows in confident.items()},
            classes, title=f"Most confident correct predictions per class ({methods[0]})",
        )
    )  # fmt: skip
    return figures


def _images(
    run_dir: Path, classes: list[str], images: Sequence[str | Path] | None, source: EvalSource
) -> tuple[list[str], np.ndarray, set[str], list[tuple[Path, str]]]:
    """The images to explain and their labels: given one by one, or those of ``source``.

    Returns:
        ``(paths, y, named, skipped)``: as :func:`popevit.explain.inputs.image_labels` (nothing is named one by one
        in a source; its skipped files come from the data layer).
    """
    if images is None:
        paths, y, info = load_eval_samples(run_dir, classes, source)
        return paths, y, set(), [(Path(p), reason) for p, reason in info["skipped"]]
    if source.data is not None or source.manifest is not None:
        raise ValueError("pass either images, data or manifest, not several")
    return image_labels(images, classes)


def _load_items(
    paths: list[str], y: np.ndarray, cfg: PreprocessConfig, named: set[str]
) -> tuple[list[Item], np.ndarray, list[tuple[Path, str]]]:
    """Decode and preprocess every image (:func:`popevit.explain.inputs.load_item`).

    An image that cannot be decoded is skipped with the reason, unless the user named it one by one: then its error
    stands rather than an explanation made without it.

    Returns:
        ``(items, y, skipped)``: the decoded images, their (n,) labels, and the files skipped with the reason.
    """
    items, kept, skipped = [], [], []
    pairs = enumerate(zip(paths, y, strict=True))
    for i, (p, lbl) in track(pairs, f"loading {len(paths)} images", len(paths)):
        try:
            items.append(load_item(p, int(lbl), cfg))
            kept.append(i)
        except DecodeError as err:
            if p in named:
                raise
            skipped.append((Path(p), err.reason))
    return items, y[kept], skipped


def _write_maps(path: Path, items: Sequence[Item], maps: dict[str, torch.Tensor]) -> None:
    """``maps.npz``: the (n, S, S) float16 maps per method, with the paths, written atomically."""
    arrays = {m.replace("-", "_"): v.numpy().astype(np.float16) for m, v in maps.items()}
    paths_arr = np.array([it.path for it in items])

    def write_maps(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object: given a name, numpy would append ".npz" to it
            np.savez_compressed(fh, paths=paths_arr, **arrays)

    atomic_write(path, write_maps)


def explain_run(
    run_dir: str | Path,
    source: EvalSource | None = None,
    *,
    images: Sequence[str | Path] | None = None,
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
    **source_fields: Any,
) -> ExplainResult:
    """Explain a trained run's predictions.

    Args:
        run_dir: run folder with ``model.safetensors`` + ``model.json``.
        source: the images when ``images`` is None (:class:`popevit.evaluation.source.EvalSource`; default the run's
            own ``manifest.csv`` ``test`` split).
        images: image files or folders (labels from class-named parent folders, else unknown).
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
        **source_fields: the fields of ``source`` as keywords (``data=``, ``manifest=``, ``split=``).

    Returns:
        :class:`ExplainResult`.
    """
    source = EvalSource.of(source, **source_fields)
    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    run_dir, dev = Path(run_dir), resolve_device(device)
    model, meta = load_artifact(run_dir, map_location=dev)
    classes, cfg = meta.classes, meta.preprocess
    methods = resolve_methods(method, model)
    paths, y, named, skipped = _images(run_dir, classes, images, source)

    # 1. predict everything (cheap), 2. explain a selection: mistakes, confident hits, random fill.
    items_all, y, unreadable = _load_items(paths, y, cfg, named)
    skipped += unreadable
    if not items_all:
        raise ValueError(f"none of the {len(paths)} images could be read (e.g. {skipped[0][0]}: {skipped[0][1]})")
    x_all = torch.stack([to_tensor(it.pre, cfg) for it in items_all])  # (n, C, S, S)
    with torch.inference_mode():
        proba = torch.cat([model(xb.to(dev)).float().softmax(-1).cpu() for xb in x_all.split(batch_size)]).numpy()
    chosen, mistakes, confident = _select(proba, y, max_images=max_images, per_class=per_class, seed=seed)
    items, x = [items_all[i] for i in chosen], x_all[chosen]
    tgt = _targets(target, proba[chosen].argmax(1), y[chosen], [it.path for it in items], classes)
    options = {"head_fusion": head_fusion, "discard_ratio": discard_ratio}
    maps = {m: _batched_maps(model, x, tgt, m, batch_size, options if m == "rollout" else {}) for m in methods}

    out_dir = Path(out) if out is not None else run_dir / EXPLAIN_DIR / methods[0]
    (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
    figures = _figures(out_dir, items, maps, proba, chosen, mistakes, confident, tgt, classes)
    _write_table(out_dir / "explanations.csv", items, proba[chosen], tgt, classes)
    _write_maps(out_dir / "maps.npz", items, maps)
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
