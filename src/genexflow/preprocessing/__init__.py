"""Preprocessing estimators with Bioconductor parity: normalization, filtering, KNN imputation,
ComBat, ComBat-seq, and the composed, ONNX-exportable :class:`PreprocessingPipeline`."""

from genexflow.preprocessing.combat import ComBat

__all__ = ["ComBat"]
