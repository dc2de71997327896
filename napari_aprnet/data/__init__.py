"""Datasets, augmentation and loaders for APRNet training (thesis chapter 4).

- :mod:`.shapes`: synthetic shape images (streams and fixed, nested datasets).
- :mod:`.nuclei`: synthetic nuclei images with instance masks (segmentation), 2D and 3D.
- :mod:`.annotated`: training crops of in-memory images with drawn labels (segmentation).
- :mod:`.folder`: image folders with one sub-folder per class, or images and masks.
- :mod:`.transforms`: resize, channel matching, augmentation.
- :mod:`.spec`: :class:`InputSpec`, how an image becomes a network input.
- :mod:`.cache`: :class:`APRCache` of converted APRs.
- :mod:`.loader`: batch loaders (APR conversion in worker processes).
"""
from napari_aprnet.data.annotated import AnnotatedImages, CropDataset
from napari_aprnet.data.cache import APRCache, image_key
from napari_aprnet.data.folder import (
                                       FolderDataset,
                                       SegmentationFolder,
                                       read_image_file,
                                       read_mask_file,
                                       split_indices,
)
from napari_aprnet.data.loader import (
                                       Batch,
                                       class_targets,
                                       epoch_batches,
                                       estimate_normalisation,
                                       make_loader,
                                       stream_batches,
)
from napari_aprnet.data.nuclei import (
                                       NUCLEI_DATASETS,
                                       NucleiDataset,
                                       NucleiParams,
                                       NucleiStream,
                                       make_nuclei,
                                       make_nuclei_splits,
)
from napari_aprnet.data.shapes import (
                                       CLASS_NAMES,
                                       DEFAULT_PARAMS,
                                       MODIFIED_PARAMS,
                                       ShapeInfo,
                                       ShapeParams,
                                       ShapesDataset,
                                       ShapeStream,
                                       make_shapes_dataset,
                                       make_shapes_splits,
                                       random_shape,
)
from napari_aprnet.data.spec import InputSpec
from napari_aprnet.data.transforms import augment, match_channels, resize_bilinear, to_float01

__all__ = [
    "AnnotatedImages", "CropDataset",
    "FolderDataset", "SegmentationFolder", "read_image_file", "read_mask_file", "split_indices",
    "APRCache", "Batch", "InputSpec", "class_targets", "epoch_batches", "estimate_normalisation", "image_key",
    "make_loader", "stream_batches",
    "NUCLEI_DATASETS", "NucleiDataset", "NucleiParams", "NucleiStream", "make_nuclei", "make_nuclei_splits",
    "CLASS_NAMES", "DEFAULT_PARAMS", "MODIFIED_PARAMS", "ShapeInfo", "ShapeParams", "ShapesDataset",
    "ShapeStream", "make_shapes_dataset", "make_shapes_splits", "random_shape",
    "augment", "match_channels", "resize_bilinear", "to_float01",
]
