"""Thin Typer layer: one module per command group, parsing arguments and calling the library."""
