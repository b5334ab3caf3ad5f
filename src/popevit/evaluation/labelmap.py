"""Label maps for cross-dataset evaluation: a model's classes and another data set's classes onto shared targets.

An external set rarely has the model's classes. Br35H has ``yes``/``no``, the Kaggle model predicts glioma,
meningioma, notumor and pituitary. A label map names, for either side, which classes become which target:

    --label-map "yes=tumor,no=notumor,glioma|meningioma|pituitary=tumor"

Each rule is ``PATTERN[|PATTERN...]=TARGET``; a pattern is a glob (``fnmatch``, case-sensitive) matched against the
model's classes and the data's classes. A class that no rule names keeps its own name; every data class must end on
a target that some model class reaches. The model's probabilities collapse by summing (``p_tumor = p_glioma +
p_meningioma + p_pituitary``), and the prediction is the arg-max over the targets. Without rules, data whose classes
are a subset of the model's is evaluated on those classes (the model still predicts all of its own).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

import numpy as np

from popevit.registry import did_you_mean

TUMOR_CLASSES_HINT = "glioma|meningioma|pituitary=tumor"


class LabelMapError(ValueError):
    """A label map that leaves a class unmapped, maps onto a class the model cannot predict, or names no class."""


@dataclass(frozen=True)
class LabelMap:
    """Model classes and data classes mapped onto ``targets`` (the classes the evaluation is scored in).

    Attributes:
        targets: target class names, in output order.
        model: model class -> target, for every model class.
        data: data class -> target, for every data class.
        rules: the parsed rules, as given.
    """

    targets: list[str]
    model: dict[str, str]
    data: dict[str, str]
    rules: tuple[tuple[tuple[str, ...], str], ...] = ()

    @property
    def identity(self) -> bool:
        """True when every model class is its own target (no collapsing)."""
        return all(k == v for k, v in self.model.items()) and list(self.model) == self.targets

    def collapse(self, proba: np.ndarray, model_classes: list[str]) -> np.ndarray:
        """(n, K) model probabilities -> (n, T) target probabilities, each the sum of its model classes."""
        out = np.zeros((proba.shape[0], len(self.targets)), dtype=np.float64)
        for k, c in enumerate(model_classes):
            out[:, self.targets.index(self.model[c])] += proba[:, k]
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "rules": ["|".join(pats) + "=" + target for pats, target in self.rules],
            "targets": self.targets,
            "model": self.model,
            "data": self.data,
        }


def parse_label_map(text: str | None) -> tuple[tuple[tuple[str, ...], str], ...]:
    """``"yes=tumor,glioma|meningioma=tumor"`` -> ``((("yes",), "tumor"), (("glioma", "meningioma"), "tumor"))``."""
    if not text:
        return ()
    rules = []
    for item in text.split(","):
        if not item.strip():
            continue
        if item.count("=") != 1:
            raise LabelMapError(
                f"label map item {item!r} is not PATTERN=TARGET; write e.g. --label-map 'yes=tumor,no=notumor,"
                f"{TUMOR_CLASSES_HINT}'"
            )
        lhs, target = (s.strip() for s in item.split("="))
        patterns = tuple(p.strip() for p in lhs.split("|"))
        if not target or not all(patterns):
            raise LabelMapError(f"label map item {item!r} has an empty class name; write e.g. yes=tumor")
        rules.append((patterns, target))
    return tuple(rules)


def _suggest(model_classes: list[str], data_classes: list[str]) -> str:
    """A label map that would fit: near-miss names onto the model's class, tumour / no-tumour data and models (either
    side binary), else a generic example."""
    import difflib

    from popevit.data.discover import NO_TUMOR_NAMES

    unknown = [c for c in data_classes if c not in model_classes]
    near = {c: difflib.get_close_matches(c, model_classes, n=1, cutoff=0.8) for c in unknown}
    if unknown and all(near.values()):  # typos such as 'gliomaa'
        return ",".join(f"{c}={m[0]}" for c, m in near.items())
    no = [c for c in data_classes if c.lower() in NO_TUMOR_NAMES]
    if "notumor" in model_classes and len(no) == 1:
        yes_data = [c for c in data_classes if c != no[0]]
        yes_model = [c for c in model_classes if c != "notumor"]
        rules = [f"{'|'.join(yes_data)}=tumor"] if yes_data and yes_data != ["tumor"] else []
        rules += [f"{no[0]}=notumor"] if no[0] != "notumor" else []
        rules += [f"{'|'.join(yes_model)}=tumor"] if yes_model != ["tumor"] else []
        if rules:
            return ",".join(rules)
    return ",".join(f"{d}={model_classes[min(i, len(model_classes) - 1)]}" for i, d in enumerate(data_classes))


def resolve_label_map(
    rules: tuple[tuple[tuple[str, ...], str], ...], model_classes: list[str], data_classes: list[str]
) -> LabelMap:
    """Apply ``rules`` to both sides and check that the result is an evaluation the model can be scored on.

    Args:
        rules: from :func:`parse_label_map` (empty: identity; the data's classes must then be among the model's).
        model_classes: the model's classes, in output order.
        data_classes: the classes found in the evaluation data.

    Returns:
        The :class:`LabelMap`; its targets are sorted.

    Raises:
        LabelMapError: a pattern that names no class, a class mapped twice, or a data class that ends on a target no
            model class reaches; the message names the classes and a map that would work.
    """
    both = sorted(set(model_classes) | set(data_classes))
    for patterns, _ in rules:
        for pat in patterns:
            if not fnmatch.filter(both, pat):
                raise LabelMapError(
                    f"label map pattern {pat!r} matches no class of the model {model_classes} or of the data "
                    f"{data_classes}{did_you_mean(pat, both)}"
                )

    def mapping(classes: list[str], side: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for c in classes:
            hits = {t for pats, t in rules if any(fnmatch.fnmatchcase(c, p) for p in pats)}
            if len(hits) > 1:
                raise LabelMapError(
                    f"the {side}'s class {c!r} is mapped to several targets {sorted(hits)}; map it once"
                )
            out[c] = hits.pop() if hits else c
        return out

    model_map = mapping(model_classes, "model")
    data_map = mapping(data_classes, "data")
    targets = sorted(set(model_map.values()))  # sorted, as popevit orders every class list
    unreachable = sorted(c for c, t in data_map.items() if t not in targets)
    if unreachable:
        what = "map to no target that the model predicts" if rules else "are not among the model's classes"
        raise LabelMapError(
            f"the data's classes {unreachable} {what} (data classes {data_classes}, model classes {model_classes}"
            + (f" -> targets {targets}" if rules else "")
            + f"); pass a label map, e.g. --label-map '{_suggest(model_classes, data_classes)}'"
        )
    return LabelMap(targets=targets, model=model_map, data=data_map, rules=tuple(rules))
