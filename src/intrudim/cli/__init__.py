"""The ``intrudim`` command line (the top layer): ``app.py`` registers one module per command."""

from intrudim.cli.app import app, main

__all__ = ["app", "main"]
