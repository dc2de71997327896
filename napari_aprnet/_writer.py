"""npe2 writer: save an image layer as an ``.apr`` file (imports no napari)."""
from __future__ import annotations

from typing import Any

import numpy as np

from napari_aprnet._layer_data import APR_KEY, METADATA_KEY
from napari_aprnet.apr import APR
from napari_aprnet.params import APRParameters

__all__ = ["apr_for_layer", "write_apr"]


def apr_for_layer(data: Any, meta: dict) -> Any:
    """Return the APR to save for a layer's ``data`` and ``meta`` (its state dict).

    A layer made by this plugin carries its APR in ``metadata["aprnet_apr"]``;
    it is saved as is. Otherwise the data are converted with the parameters in
    ``metadata["aprnet"]["parameters"]`` if present, else the defaults.
    """
    metadata = (meta or {}).get("metadata") or {}
    apr = metadata.get(APR_KEY)
    if apr is not None and metadata.get(METADATA_KEY, {}).get("role") == "reconstruction":
        return apr
    image = np.asarray(data)
    rgb = bool((meta or {}).get("rgb", False))
    if image.ndim - rgb not in (2, 3):
        raise ValueError(f"only 2D or 3D images (optionally RGB) can be saved as .apr; "
                         f"this layer has shape {image.shape}")
    stored = metadata.get(METADATA_KEY, {}).get("parameters")
    params = APRParameters.from_dict(stored) if stored else APRParameters()
    return APR.from_image(image, params.rel_error, params=params,
                          channel_axis=-1 if rgb else None)


def write_apr(path: str, data: Any, meta: dict) -> list[str]:
    """Save one image layer as ``path`` (``.apr``); return the written paths."""
    if not str(path).lower().endswith(".apr"):
        path = f"{path}.apr"
    apr_for_layer(data, meta).save(path)
    return [str(path)]
