"""The `ecmctl` command line: thin commands (app) that call one library function each, and the rich
renderings of their results (render)."""

from ecmctl.cli.app import app, main

__all__ = ["app", "main"]
