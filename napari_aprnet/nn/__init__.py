"""APRNet layers for PyTorch (thesis chapter 3).

Data flows as :class:`APRBatch` (channels-last particle features of several
APRs concatenated, plus their structures). See :mod:`napari_aprnet.nn.functional`
for the exact convolution and pooling definitions.
"""
from napari_aprnet.nn import functional
from napari_aprnet.nn._plans import clear_structure_caches
from napari_aprnet.nn.batch import APRBatch
from napari_aprnet.nn.functional import apr_concat, apr_conv_transpose, apr_upsample
from napari_aprnet.nn.modules import (
                                      APRBatchNorm,
                                      APRConcat,
                                      APRConv,
                                      APRConvTranspose,
                                      APRDropout,
                                      APRGlobalAvgPool,
                                      APRMaxPool,
                                      APRReLU,
                                      APRSpatialDropout,
                                      APRUpsample,
)
from napari_aprnet.nn.syncbn import SyncPixelBatchNorm, convert_sync_batchnorm

__all__ = ["APRBatch", "APRConv", "APRMaxPool", "APRUpsample", "APRConvTranspose", "APRConcat", "APRBatchNorm",
           "APRDropout", "APRSpatialDropout", "APRReLU", "APRGlobalAvgPool", "apr_upsample", "apr_conv_transpose",
           "apr_concat", "clear_structure_caches", "functional", "SyncPixelBatchNorm", "convert_sync_batchnorm"]
