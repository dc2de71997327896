"""The ``aprnet`` command (:func:`main`): :mod:`.main` and one module per command group."""
from napari_aprnet.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
