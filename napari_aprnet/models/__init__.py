"""Networks: :mod:`.registry` (names, :class:`ModelSpec`, :func:`build_model`) and
:mod:`.classifiers` (the thesis classifiers, Tables 4.1 and 4.3)."""
from napari_aprnet.models.classifiers import ARCHITECTURES, ClassifierNet
from napari_aprnet.models.registry import (
    MODEL_NAMES,
    ModelSpec,
    build_model,
    conv_weight_count,
    model_from_config,
    parse_model_name,
)

__all__ = ["ARCHITECTURES", "MODEL_NAMES", "ClassifierNet", "ModelSpec", "build_model", "conv_weight_count",
           "model_from_config", "parse_model_name"]
