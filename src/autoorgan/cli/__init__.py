"""The ``autoorgan`` command line: a thin Typer layer over :mod:`autoorgan.api`."""

from autoorgan.cli.app import app, main

__all__ = ["app", "main"]
