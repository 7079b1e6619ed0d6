"""The pathway-aware network: config, layers, the pure ``nn.Module`` and ONNX / TorchScript export."""

from genexflow.models.config import PathwayNetConfig
from genexflow.models.export import export_onnx, export_torchscript, verify_onnx
from genexflow.models.layers import (
    EdgePropagation,
    FastDropout,
    GraphConv,
    MembershipPropagation,
    MultiHeadSelfAttention,
    PathwayPooling,
    TransformerEncoderLayer,
    dense_propagation,
    make_propagation,
)
from genexflow.models.module import PathwayNet, PathwayNetLoss, PathwayNetOutput

__all__ = [
    "EdgePropagation", "FastDropout", "GraphConv", "MembershipPropagation", "MultiHeadSelfAttention", "PathwayNet",
    "PathwayNetConfig", "PathwayNetLoss", "PathwayNetOutput", "PathwayPooling", "TransformerEncoderLayer",
    "dense_propagation", "export_onnx", "export_torchscript", "make_propagation", "verify_onnx",
]
