"""Where a config's raw values come from, before validation: YAML files, ``base:`` inheritance, ``--set`` overrides.

:func:`read_yaml` parses a file safely and refuses a key given twice; :func:`resolve_bases` merges the files a config
names under ``base:`` beneath it; :func:`apply_overrides` applies dotted ``key=value`` strings. Every error is a
:class:`ConfigError` that names the file or override and the fix. :func:`popevit.config.load_config` chains them and
validates the result against :class:`popevit.config.ExperimentConfig`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override that does not validate; the message names the key and the fix."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error.

    Plain YAML keeps the last of two equal keys, so a config with two ``optim:`` blocks silently loses the first.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} appears twice in one mapping (first on line {seen[key] + 1}); a YAML mapping "
                    "keeps only the last one, so delete or merge one of them",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file safely (no Python objects), refusing duplicate keys; every error names the file and line.

    Raises:
        ConfigError: not UTF-8, a syntax error, or a key given twice in one mapping.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config {str(path)!r} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: builds plain data only
    except yaml.YAMLError as err:
        where = ""
        mark = getattr(err, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"config {str(path)!r} is not valid YAML{where}: {problem}; fix that line") from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"optim.lr=1e-3"`` -> ``(["optim", "lr"], 0.001)``; the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value; write e.g. --set optim.lr=1e-3")
    key, raw = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[path[-1]] = value
    return raw


BASE_KEY = "base"


def _merge(under: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else (scalars, lists) in ``over`` replaces ``under``'s."""
    out = dict(under)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def resolve_bases(raw: dict[str, Any], path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Merge the files a config names under ``base:`` beneath it, recursively.

    ``base:`` is one path or a list of paths, relative to the folder of the file that names it. Bases merge in order
    (a later base overrides an earlier one) and the file itself overrides them all; mappings merge key by key, lists
    and scalars replace. A base may be partial: only the merged result is validated.

    Args:
        raw: the parsed mapping of ``path``.
        path: the file ``raw`` came from.
        chain: the files that led here, to refuse a cycle.

    Returns:
        ``raw`` with its bases merged under it and the ``base`` key removed.
    """
    here = path.resolve()
    chain = (*chain, here)
    names = raw.get(BASE_KEY) or []
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"config {str(path)!r}: base must be a file name or a list of them, got {names!r}")
    merged: dict[str, Any] = {}
    for name in names:
        base = (here.parent / name).resolve()
        if base in chain:
            cycle = " -> ".join(str(p) for p in (*chain[chain.index(base) :], base))
            raise ConfigError(f"config {str(path)!r}: base {name!r} makes a cycle ({cycle}); remove one of the links")
        if not base.is_file():
            raise ConfigError(
                f"config {str(path)!r}: base {name!r} not found at {str(base)!r}; base paths are relative to the "
                "folder of the file that names them"
            )
        parent = yaml.safe_load(base.read_text()) or {}
        if not isinstance(parent, dict):
            raise ConfigError(f"config {str(base)!r} must be a YAML mapping, got {type(parent).__name__}")
        merged = _merge(merged, resolve_bases(parent, base, chain))
    return _merge(merged, {k: v for k, v in raw.items() if k != BASE_KEY})
