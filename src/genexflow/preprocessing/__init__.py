"""Preprocessing estimators with Bioconductor parity: normalization, filtering, KNN imputation,
ComBat, ComBat-seq, Harmony, and the composed, ONNX-exportable :class:`PreprocessingPipeline`.

See ``docs/preprocessing.md`` for the R references, the parity checks and where Python peers differ.
"""

from genexflow.preprocessing.combat import ComBat
from genexflow.preprocessing.combat_seq import ComBatSeq
from genexflow.preprocessing.filtering import FilterByExpr, LowCountFilter, VarianceFilter
from genexflow.preprocessing.harmony import Harmony
from genexflow.preprocessing.impute import KNNImputer, impute_knn
from genexflow.preprocessing.normalize import (
    CPMNormalizer,
    LengthNormalizer,
    Log2p1,
    calc_norm_factors,
    cpm,
    read_gene_lengths,
)
from genexflow.preprocessing.pipeline import PreprocessingConfig, PreprocessingPipeline

__all__ = [
    "CPMNormalizer",
    "ComBat",
    "ComBatSeq",
    "FilterByExpr",
    "Harmony",
    "KNNImputer",
    "LengthNormalizer",
    "Log2p1",
    "LowCountFilter",
    "PreprocessingConfig",
    "PreprocessingPipeline",
    "VarianceFilter",
    "calc_norm_factors",
    "cpm",
    "impute_knn",
    "read_gene_lengths",
]
