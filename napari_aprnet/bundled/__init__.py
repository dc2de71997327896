"""Trained models shipped with the package, named ``bundled:<name>`` wherever a checkpoint is taken.

Each model is a normal checkpoint file in this folder, regenerated
deterministically by ``scripts/train_bundled_model.py``.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["BUNDLED_MODELS", "BUNDLED_PREFIX", "bundled_checkpoint", "resolve_checkpoint"]

#: name -> (file in napari_aprnet/bundled/, description)
BUNDLED_MODELS: dict[str, tuple[str, str]] = {
    "shapes": ("shapes_apr_b.pt", "APR_B trained on the synthetic shapes (six classes, 256x256, E = 0.1); "
                                  "regenerate with scripts/train_bundled_model.py"),
    "nuclei2d": ("nuclei2d_apr_unet.pt", "APR_UNet segmenting 2D fluorescent nuclei (background, interior, "
                                         "boundary; E = 0.2, trained on the synthetic nuclei2d data); "
                                         "regenerate with scripts/train_bundled_model.py nuclei2d"),
}
BUNDLED_PREFIX = "bundled:"


def bundled_checkpoint(name: str) -> Path:
    """Path of the bundled model ``name`` (see :data:`BUNDLED_MODELS`).

    Raises
    ------
    ValueError
        For an unknown name (the message lists the bundled models).
    FileNotFoundError
        When the package was installed without the model file.
    """
    if name not in BUNDLED_MODELS:
        raise ValueError(f"no bundled model {name!r}; bundled models: {', '.join(sorted(BUNDLED_MODELS))}")
    path = Path(__file__).parent / BUNDLED_MODELS[name][0]
    if not path.is_file():
        raise FileNotFoundError(f"the bundled model {name!r} is missing from the installation ({path}); "
                                "reinstall napari-aprnet or run scripts/train_bundled_model.py")
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """``bundled:<name>`` -> the bundled model's file; any other path unchanged."""
    text = str(path)
    if text.startswith(BUNDLED_PREFIX):
        return bundled_checkpoint(text[len(BUNDLED_PREFIX):])
    return Path(path)
