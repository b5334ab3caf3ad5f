"""``popevit data ...``: synthesise phantoms, inspect, split, audit, download.

Commands import what they run inside their functions (torch, Lightning, timm and popevit's modules built on them): a
heavy import each, kept out of ``popevit --help``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import typer

from popevit.cli.errors import user_errors
from popevit.io import atomic_write_json

app = typer.Typer(
    help="Data: synthetic phantoms, inspection, duplicate-grouped splits, leakage audits.", no_args_is_help=True
)

_CLASSES_HELP = "numeric folder map, e.g. 0=pituitary,1=meningioma,2=glioma"
_KEEP_HELP = "keep only these classes, comma-separated (e.g. glioma,meningioma,pituitary)"


def _ratios(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not three numbers, e.g. 0.8,0.1,0.1", param_hint="--ratios") from None


def _task(class_map: str | None, keep: str | None) -> tuple[dict[str, str] | None, list[str] | None]:
    from popevit.data.discover import parse_class_map

    return parse_class_map(class_map), ([c.strip() for c in keep.split(",") if c.strip()] if keep else None)


@app.command()
def synth(
    out: Path = typer.Argument(..., help="output folder"),
    per_class: int = typer.Option(50, "--per-class", help="images per class"),
    size: int | None = typer.Option(None, "--size", help="square side in px; default: random sizes like real data"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Write synthetic axial brain-MRI phantoms (4 classes, lesion masks, metadata.csv)."""
    from popevit.data.phantoms import synthesize

    with user_errors(OSError):
        synthesize(out, per_class=per_class, size=size, seed=seed)
    typer.echo(f"wrote {4 * per_class} phantoms to {out} (masks in {out / 'masks'}, table in {out / 'metadata.csv'})")


@app.command()
def inspect(
    data: Path = typer.Argument(..., help="data folder (<root>/<class>/* or <root>/{Training,Testing}/<class>/*)"),
    json_out: Path | None = typer.Option(None, "--json", help="write the full report as JSON"),
    class_map: str | None = typer.Option(None, "--classes", help=_CLASSES_HELP),
    keep: str | None = typer.Option(None, "--keep", help=_KEEP_HELP),
    binary: bool = typer.Option(False, "--binary", help="tumour vs no tumour"),
    near_threshold: int = typer.Option(28, "--near-threshold", help="pHash-256 Hamming threshold; -1 disables"),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="default: $POPEVIT_CACHE or ~/.cache/popevit"),
    workers: int | None = typer.Option(None, "--workers", help="decoding processes (default: all cores)"),
) -> None:
    """Counts, modes, sizes, format mismatches, unreadable files, exact and near duplicates."""
    from popevit.data.cache import default_cache_dir
    from popevit.data.inspection import format_report, inspect_data

    with user_errors(OSError):
        cm, classes = _task(class_map, keep)
        report = inspect_data(data, class_map=cm, classes=classes, binary=binary,
                              near_threshold=None if near_threshold < 0 else near_threshold,
                              cache_dir=default_cache_dir(cache_dir), workers=workers)  # fmt: skip
        typer.echo(format_report(report))
        if json_out is not None:
            atomic_write_json(json_out, report, indent=1)
            typer.echo(f"report: {json_out} (lists every skipped and unreadable file)")
        elif report["skipped"] or report["unreadable"]:
            typer.echo("(--json FILE lists every skipped and unreadable file)")


@app.command()
def split(
    data: Path = typer.Argument(..., help="data folder"),
    out: Path = typer.Option(..., "--out", help="manifest CSV to write"),
    seed: int = typer.Option(0, "--seed"),
    ratios: str = typer.Option("0.8,0.1,0.1", "--ratios", help="train,val,test fractions"),
    class_map: str | None = typer.Option(None, "--classes", help=_CLASSES_HELP),
    keep: str | None = typer.Option(None, "--keep", help=_KEEP_HELP),
    binary: bool = typer.Option(False, "--binary", help="tumour vs no tumour"),
    near_threshold: int = typer.Option(28, "--near-threshold", help="pHash-256 Hamming threshold; -1: exact only"),
    cache_dir: Path | None = typer.Option(None, "--cache-dir"),
    workers: int | None = typer.Option(None, "--workers"),
    add: list[str] = typer.Option(
        [], "--add", help="NAME=FOLDER: split another source together with DATA (duplicates grouped across both)"
    ),
    source_name: str | None = typer.Option(None, "--name", help="with --add: DATA's source name (default: its folder)"),
    base: Path | None = typer.Option(
        None, "--base", help="an earlier manifest of DATA: keep its splits (with --add: the new source joins them)"
    ),
) -> None:
    """Stratified, duplicate-grouped, seeded train/val/test split written to a manifest CSV.

    With --add, several sources go into one manifest (a source column); a tumour / no-tumour source (e.g. Br35H's
    yes/no) beside a 4-class one keeps the partial label 'tumor', which training uses for tumour vs no tumour only.
    """
    from popevit.data.cache import default_cache_dir
    from popevit.data.checks import class_warnings, format_skipped, read_skipped
    from popevit.data.manifest import make_split, read_manifest, skipped_file

    with user_errors(OSError):
        r = _ratios(ratios)
        cm, classes = _task(class_map, keep)
        extra = {}
        for item in add:
            name, sep, folder = item.partition("=")
            if not sep or not name.strip() or not folder.strip():
                raise ValueError(f"--add {item!r} is not NAME=FOLDER; write e.g. --add br35h=data/br35h")
            extra[name.strip()] = Path(folder.strip())
        if source_name is not None and not extra:
            raise ValueError("--name names DATA among several sources; it needs --add NAME=FOLDER")
        make_split(data, out, seed=seed, ratios=r, class_map=cm, classes=classes, binary=binary,
                   near_threshold=None if near_threshold < 0 else near_threshold,
                   cache_dir=default_cache_dir(cache_dir), workers=workers, extra=extra or None,
                   source_name=source_name, base=base)  # fmt: skip
        man = read_manifest(out)
    for s, counts in man.counts().items():
        typer.echo(f"{s:<9}" + "  ".join(f"{c}={n}" for c, n in counts.items()))
    for src in man.sources:
        per = Counter(r.split for r in man.rows if r.source == src)
        typer.echo(
            f"source   {src}: " + "  ".join(f"{k}={per.get(k, 0)}" for k in ("train", "val", "test", "excluded"))
        )
    for note, n in sorted(Counter(r.note.split(":")[0] for r in man.rows if r.note).items()):
        typer.echo(f"note     {n} x {note} (the manifest's note column has the details)")
    listing = skipped_file(out)
    if text := format_skipped(read_skipped(listing), data, listing):
        typer.echo(text, err=True)
    usable = Counter(row.label for row in man.select(None))
    for warning in class_warnings({c: usable.get(c, 0) for c in man.classes}, data):
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"manifest: {out} (sha256 {man.sha256[:12]})")


@app.command()
def audit(
    train: Path = typer.Option(..., "--train", help="data folder or manifest CSV"),
    test: Path | None = typer.Option(None, "--test", help="external test folder"),
    json_out: Path | None = typer.Option(None, "--json", help="write the report as JSON"),
    pairs: Path | None = typer.Option(None, "--pairs", help="CSV of leaking pairs (default: next to --json)"),
    img_size: int = typer.Option(128, "--img-size", help="preprocessing size for the preprocessed probe"),
    near_threshold: int = typer.Option(28, "--near-threshold", help="pHash-256 Hamming threshold; -1: exact only"),
    no_probe: bool = typer.Option(False, "--no-probe", help="skip the shortcut probes"),
    no_confound: bool = typer.Option(False, "--no-confound", help="skip the source-confound clusters and probes"),
    cache_dir: Path | None = typer.Option(None, "--cache-dir"),
    workers: int | None = typer.Option(None, "--workers"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Leakage (exact/near duplicates across sets) and metadata shortcut probes (raw vs preprocessed)."""
    from popevit.config import PreprocessConfig
    from popevit.data.audit import audit as run_audit
    from popevit.data.audit import format_audit
    from popevit.data.checks import format_skipped
    from popevit.data.discover import discover

    if pairs is None and json_out is not None:
        pairs = json_out.with_name(json_out.stem + "_pairs.csv")
    with user_errors(OSError):
        report = run_audit(train, test, near_threshold=near_threshold, pairs_csv=pairs,
                           preprocess=PreprocessConfig(img_size=img_size), cache_dir=cache_dir, workers=workers,
                           seed=seed, probe=not no_probe, confound=not no_confound)  # fmt: skip
        typer.echo(format_audit(report))
        for src in (train, test):  # a manifest lists its excluded files itself; a folder says what it skipped
            if src is not None and src.is_dir() and (text := format_skipped(discover(src).skipped, src)):
                typer.echo(text, err=True)
        if json_out is not None:
            atomic_write_json(json_out, report, indent=1)
            typer.echo(f"report: {json_out}")


@app.command()
def download(
    name: str = typer.Argument(..., help="dataset name, e.g. kaggle-brain-tumor-mri"),
    out: Path = typer.Option(..., "--out", help="destination folder"),
    timeout: float = typer.Option(3.0, "--timeout", help="seconds to wait for the network before giving up"),
) -> None:
    """Download a public dataset via kagglehub (needs network; may need Kaggle credentials)."""
    from popevit.data.download import download as fetch

    with user_errors(OSError, RuntimeError):
        path = fetch(name, out, timeout=timeout)
    typer.echo(f"downloaded to {path}")
