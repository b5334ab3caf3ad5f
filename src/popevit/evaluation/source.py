"""What a run is evaluated on: :class:`EvalSource`, and the images and labels it names.

One source is the images (an image folder, a manifest split, or by default the run's own ``manifest.csv``) and how
they are fed and scored: input size, test-time augmentation, temperature scaling, a label map onto other classes, one
source of a manifest of several. ``popevit evaluate``, ``compare``, ``study`` and ``explain`` all take one, and its
:meth:`EvalSource.tag` names the folder ``RUN/eval/<tag>`` that its predictions go to.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from popevit.config import load_config
from popevit.data import load_samples
from popevit.data.discover import RESERVED_DIRS, SPLIT_DIRS
from popevit.evaluation.labelmap import LabelMap, LabelMapError, parse_label_map, resolve_label_map

EVAL_DIR = "eval"
RUN_MANIFEST = "manifest.csv"


def resolve_split(data: str | Path | None, split: str | None) -> str | None:
    """The split actually used: manifests use ``split``; a folder uses it only if it has an official split layout.

    A Kaggle root folder holding ``Training/`` and ``Testing/`` with ``split="test"`` evaluates ``Testing/``; a plain
    class-folder layout (e.g. the ``Testing`` folder itself) has no splits, so all of its images are used.
    """
    if data is None or split is None:
        return split
    top = [p for p in Path(data).iterdir() if p.is_dir() and not p.name.startswith(".")]
    top = [p for p in top if p.name.lower() not in RESERVED_DIRS]
    return split if top and all(p.name.lower() in SPLIT_DIRS for p in top) else None


@dataclass(frozen=True)
class EvalSource:
    """The images a run is evaluated on, and how they are fed and scored.

    Attributes:
        data: an image folder in any layout the data layer reads: all its images, or with an official
            ``Training``/``Testing`` layout the ``split`` one (see :func:`resolve_split`).
        manifest: a manifest CSV; ``split`` selects its rows. With neither, the run's own ``manifest.csv``.
        split: manifest split (default ``test``).
        img_size: feed images at this size instead of the training size (resolution extrapolation; a multiple of
            the patch size).
        tta: average the probabilities over a horizontal flip.
        calibrate: temperature-scale the probabilities with a ``T`` fitted on the run's validation split.
        label_map: rules of :mod:`popevit.evaluation.labelmap` mapping the model's and the data's classes onto
            shared targets, e.g. ``"yes=tumor,no=notumor,glioma|meningioma|pituitary=tumor"``.
        source_name: with a manifest of several sources (``popevit data split --add``), only this source's rows.
    """

    data: str | Path | None = None
    manifest: str | Path | None = None
    split: str | None = "test"
    img_size: int | None = None
    tta: bool = False
    calibrate: bool = False
    label_map: str | None = None
    source_name: str | None = None

    def __post_init__(self) -> None:
        if self.data is not None and self.manifest is not None:
            raise ValueError("pass either data (an image folder) or manifest (a split CSV), not both")

    @classmethod
    def of(cls, source: EvalSource | None = None, **fields: Any) -> EvalSource:
        """``source``, or one made of its fields given as keywords (as the command line passes them); not both."""
        if source is None:
            return cls(**fields)
        if fields:
            raise TypeError(f"pass the evaluation source either as source= or as its fields {sorted(fields)}")
        return source

    def resolved(self) -> EvalSource:
        """This source with the split it actually uses (:func:`resolve_split`)."""
        return replace(self, split=resolve_split(self.data, self.split))

    def at_size(self, img_size: int | None) -> EvalSource:
        """The same source fed at ``img_size`` (None: the training size)."""
        return replace(self, img_size=img_size)

    def tag(self) -> str:
        """Sub-folder of ``RUN/eval`` per source: ``test``, ``data-Testing``, ``data-kaggle-test``,
        ``manifest-val-tta``, ``test-br35h`` for one source of a manifest of several, ``test-224px`` for another input
        size than the model was trained at, and ``test-ts`` when temperature-scaled."""
        split = self.split
        if self.data is not None:
            tag = f"data-{Path(self.data).resolve().name}" + (f"-{split}" if split else "")
        elif self.manifest is not None:
            tag = f"{Path(self.manifest).stem}-{split or 'all'}"
        else:
            tag = split or "all"
        tag += f"-{self.source_name}" if self.source_name else ""
        size = f"-{self.img_size}px" if self.img_size else ""
        return tag + ("-tta" if self.tta else "") + size + ("-ts" if self.calibrate else "")

    def eval_dir(self, run_dir: str | Path) -> Path:
        """``RUN/eval/<tag>``: where a run's predictions on this source go."""
        return Path(run_dir) / EVAL_DIR / self.tag()

    def location(self, run_dir: str | Path) -> str:
        """The images as an absolute path: the image folder, the manifest, or the run's own ``manifest.csv``."""
        src = self.data if self.data is not None else self.manifest
        return str(Path(src if src is not None else Path(run_dir) / RUN_MANIFEST).resolve())

    def describe(self) -> dict[str, Any]:
        """The source as ``compare.json`` records it."""
        return {
            "data": str(self.data) if self.data else None,
            "manifest": str(self.manifest) if self.manifest else None,
            "split": resolve_split(self.data, self.split),
            "tta": self.tta,
            "img_size": self.img_size,
            "label_map": self.label_map,
            "source": self.source_name,
        }


def _run_data_options(run_dir: Path) -> dict[str, Any]:
    """The run's task definition (class_map, classes, binary) from its ``config.yaml``, so new data is mapped alike."""
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        return {}
    d = load_config(cfg_path).data
    return {"class_map": d.class_map, "classes": d.classes, "binary": d.binary}


def dataset_name(paths: list[Path] | list[str]) -> str:
    """What a manifest's images are, by the folder that holds their class folders: ``phantoms``,
    ``brain-tumor-mri/Training`` (a split folder is named with its parent), ``br35h + brain-tumor-mri/Training``
    for several (at most three named)."""
    roots = sorted({Path(p).parent.parent for p in paths}, key=str)
    names = [f"{r.parent.name}/{r.name}" if r.name.lower() in SPLIT_DIRS and r.parent.name else r.name for r in roots]
    names = [n for n in names if n]
    return " + ".join(names[:3] + ([f"{len(names) - 3} more"] if len(names) > 3 else [])) or "manifest"


def load_mapped_samples(
    run_dir: Path, model_classes: list[str], source: EvalSource
) -> tuple[list[str], np.ndarray, dict[str, Any], LabelMap]:
    """Images and labels of ``source``, mapped onto classes the model can be scored in.

    Args:
        run_dir: the run (its ``manifest.csv`` is the default source, and its config gives the task definition).
        model_classes: the model's classes in output order.
        source: the images (its ``split`` as given: see :meth:`EvalSource.resolved`) and label map; None of
            ``label_map``: the data's classes must be among the model's.

    Returns:
        ``(paths, y, info, label_map)``: paths, (n,) indices into ``label_map.targets``, a description of the source
        (``external`` is True for anything but the run's own manifest, ``name`` names it), and the map.

    Raises:
        LabelMapError: the data's classes do not fit the model's and no label map makes them.
    """
    data, manifest, split, source_name = source.data, source.manifest, source.split, source.source_name
    own = run_dir / RUN_MANIFEST
    if data is None and manifest is None:
        manifest = own
        if not manifest.is_file():
            raise FileNotFoundError(
                f"{str(manifest)!r} not found and no data given: pass --data DIR or --manifest FILE --split test"
            )
    opts = _run_data_options(run_dir)
    if data is not None:
        if not Path(data).is_dir():
            raise FileNotFoundError(f"data folder {str(data)!r} not found")
        samples = load_samples(data=Path(data), split=split, **opts)
        info: dict[str, Any] = {"data": str(data), "split": split, "name": Path(data).resolve().name}
    else:
        opts.pop("class_map", None)  # manifests hold class names already
        samples = load_samples(manifest=Path(manifest), split=split, source=source_name, **opts)
        name = source_name or (dataset_name(samples.paths) if manifest == own else Path(manifest).stem)
        info = {"manifest": str(manifest), "split": split, "name": name}
        if source_name is not None:
            info["source"] = source_name
    info["resolved"] = source.location(run_dir)
    info["external"] = info["resolved"] != str(own.resolve())
    try:
        lmap = resolve_label_map(parse_label_map(source.label_map), list(model_classes), list(samples.classes))
    except LabelMapError as err:
        raise LabelMapError(f"{info['resolved']}: {err}") from None
    if len(samples.paths) == 0:
        raise ValueError(f"no images found in {info['resolved']}; check the path and split name")
    y = np.array([lmap.targets.index(lmap.data[lbl]) for lbl in samples.labels], dtype=np.int64)
    info["skipped"] = [[str(p), reason] for p, reason in samples.skipped]
    info["warnings"] = samples.warnings
    absent = [c for c in lmap.targets if c not in {lmap.data[d] for d in samples.classes}]
    if absent:  # a subset of the classes: scored as it is, but said
        info["warnings"].append(
            f"{info['resolved']} has no images of the model's classes {absent}: the metrics are on the classes it "
            "has, and the model still predicts all of its own"
        )
    return [str(p) for p in samples.paths], y, info, lmap


def load_eval_samples(
    run_dir: Path, model_classes: list[str], source: EvalSource
) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    """Images and labels of ``source`` in the model's own classes (its label map is not applied).

    Returns:
        ``(paths, y, info)``: paths, (n,) class indices into ``model_classes``, and a description of the source.

    Raises:
        LabelMapError: the data's classes are not among the model's (a label map would be needed).
    """
    paths, y, info, lmap = load_mapped_samples(run_dir, model_classes, replace(source, label_map=None))
    to_model = np.array([list(model_classes).index(t) for t in lmap.targets], dtype=np.int64)  # no rules: identity
    return paths, to_model[y], info
