"""Networks: :mod:`.registry` (names, :class:`ModelSpec`, :func:`build_model`),
:mod:`.classifiers` (the thesis classifiers, Tables 4.1 and 4.3) and
:mod:`.unet` (segmentation U-Nets on APRs and pixels)."""
from napari_aprnet.models.classifiers import ARCHITECTURES, ClassifierNet
from napari_aprnet.models.registry import (
    MODEL_NAMES,
    UNET_NAMES,
    ModelSpec,
    build_model,
    conv_weight_count,
    model_from_config,
    parse_model_name,
)
from napari_aprnet.models.unet import UNet

__all__ = ["ARCHITECTURES", "MODEL_NAMES", "UNET_NAMES", "ClassifierNet", "ModelSpec", "UNet", "build_model",
           "conv_weight_count", "model_from_config", "parse_model_name"]
