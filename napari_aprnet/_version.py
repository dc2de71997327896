"""The package version (one place, read by ``napari_aprnet`` and the file writers)."""
__version__ = "0.1.0"
