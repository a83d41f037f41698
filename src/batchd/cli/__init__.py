"""The ``batchd`` command line."""

from batchd.cli.main import app, main

__all__ = ["app", "main"]
