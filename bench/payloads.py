"""Request bodies and the iris model used by the benchmarks."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from apis.mlops.scheduler import scheduler_pb2
from apis.v2_dataplane import v2_dataplane_pb2
from samples import train

IRIS_REST = json.dumps(
    {"inputs": [{"name": "predict", "shape": [1, 4], "datatype": "FP32", "data": [[1, 2, 3, 4]]}]}
)
GRPC_PATH = "/inference.GRPCInferenceService/ModelInfer"


def infer_request(model_name: str) -> v2_dataplane_pb2.ModelInferRequest:
    request = v2_dataplane_pb2.ModelInferRequest(model_name=model_name)
    tensor = request.inputs.add(name="predict", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
    return request


def grpc_frame(model_name: str) -> bytes:
    """One length-prefixed gRPC message (uncompressed), as h2load sends it with ``-d``."""
    body = infer_request(model_name).SerializeToString()
    return b"\x00" + struct.pack(">I", len(body)) + body


def write(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def model(name: str, *, memory_bytes: int = 100_000, uri: str | None = None) -> scheduler_pb2.Model:
    return scheduler_pb2.Model(
        meta=scheduler_pb2.MetaData(name=name),
        modelSpec=scheduler_pb2.ModelSpec(
            uri=uri or f"file://{train.ARTIFACTS / 'iris'}",
            requirements=["sklearn"],
            memoryBytes=memory_bytes,
        ),
        deploymentSpec=scheduler_pb2.DeploymentSpec(replicas=1),
    )
