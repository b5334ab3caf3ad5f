"""The ``popevit`` console script. Each command lives in its own module; heavy imports happen inside commands."""

from __future__ import annotations

import typer

from popevit import __version__
from popevit.cli import (
    archive,
    bench,
    compare,
    data,
    demo,
    errors,
    evaluate,
    explain,
    export,
    models,
    predict,
    pretrain,
    report,
    serve,
    study,
    sweep,
    train,
)

app = typer.Typer(
    name="popevit",
    help="Train, compare, evaluate and explain Vision Transformers with swappable 2-D positional encodings "
    "for brain-tumor MRI.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=errors.ErrorHandlingGroup,
    add_completion=False,
)
app.add_typer(data.app, name="data")
app.command("train")(train.train)
app.command("pretrain")(pretrain.pretrain)
app.command("evaluate")(evaluate.evaluate)
app.command("compare")(compare.compare)
app.command("study")(study.study)
app.command("archive")(archive.archive)
app.command("report")(report.report)
app.command("explain")(explain.explain)
app.command("sweep")(sweep.sweep)
app.command("bench")(bench.bench)
app.command("models")(models.models)
app.command("demo")(demo.demo)
app.command("predict")(predict.predict)
app.command("export")(export.export)
app.command("serve")(serve.serve)


def _version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print version."),
    debug: bool = typer.Option(
        False, "--debug", help=f"Show the traceback of an error instead of one line (or set {errors.DEBUG_ENV}=1)."
    ),
):
    """popevit command line. Errors print one line and exit 2 (bad usage or input) or 1 (runtime failure)."""
    errors.set_debug(debug)
    from popevit.progress import quiet_third_party

    quiet_third_party()


if __name__ == "__main__":
    app()
