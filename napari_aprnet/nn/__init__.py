"""APRNet layers for PyTorch (thesis chapter 3).

Data flows as :class:`APRBatch` (channels-last particle features of several
APRs concatenated, plus their structures). See :mod:`napari_aprnet.nn.functional`
for the exact convolution and pooling definitions.
"""
from napari_aprnet.nn import functional
from napari_aprnet.nn._plans import clear_structure_caches
from napari_aprnet.nn.batch import APRBatch
from napari_aprnet.nn.functional import apr_concat, apr_upsample
from napari_aprnet.nn.modules import (
                                      APRBatchNorm,
                                      APRConcat,
                                      APRConv,
                                      APRDropout,
                                      APRGlobalAvgPool,
                                      APRMaxPool,
                                      APRReLU,
                                      APRSpatialDropout,
                                      APRUpsample,
)

__all__ = ["APRBatch", "APRConv", "APRMaxPool", "APRUpsample", "APRConcat", "APRBatchNorm", "APRDropout",
           "APRSpatialDropout", "APRReLU", "APRGlobalAvgPool", "apr_upsample", "apr_concat", "clear_structure_caches",
           "functional"]
