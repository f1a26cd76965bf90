"""What a failed pipeline request answers, over HTTP and gRPC, with the message that says why.

| cause                                            | HTTP | gRPC               |
|--------------------------------------------------|------|--------------------|
| malformed request (body, tensors, pipeline name) | 400  | INVALID_ARGUMENT   |
| a step's model refused the data (its 400/422)    | 400  | INVALID_ARGUMENT   |
| pipeline not loaded on this engine               | 404  | NOT_FOUND          |
| no ``output`` (async only)                       | 400  | FAILED_PRECONDITION|
| not ready (its models are not all available)     | 503  | UNAVAILABLE        |
| async: Kafka refused or lost the write            | 503  | UNAVAILABLE        |
| a step's model missing (no route, not loaded)    | 503  | UNAVAILABLE        |
| every run slot taken                             | 503  | RESOURCE_EXHAUSTED |
| deadline passed                                  | 504  | DEADLINE_EXCEEDED  |
| ``maxStepRevisits`` exceeded                     | 508  | ABORTED            |
| a step's model failed, or no branch gave output  | 500  | INTERNAL           |

The body is ``{"error": "<message>"}`` (the V2 convention); the message names the pipeline and,
when one is at fault, the step.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from pipelines.engine.models import Fault, ModelCallFailed
from pipelines.engine.runner import DeadlineExceeded, NoSyncOutput, NotServed, Overloaded
from pipelines.tensors import InvalidTensor
from pipelines.topology import NoOutput, PipelineRunError, RevisitLimitExceeded, StepFailed


class BadRequest(ValueError):
    """The caller's request cannot be read; the message says what is wrong."""


class NotReady(Exception):
    """The pipeline is loaded but not ready (its models are not all available)."""


class KafkaUnavailable(Exception):
    """An async request could not be written to its topic (the broker is down or lost the topic)."""


@dataclass(frozen=True, slots=True)
class Failure:
    http: int
    grpc: grpc.StatusCode
    message: str


def failure(error: Exception) -> Failure | None:
    """How to answer ``error``; None for an error that is a bug (let it raise)."""
    text = str(error)
    if isinstance(error, BadRequest | InvalidTensor):
        return Failure(400, grpc.StatusCode.INVALID_ARGUMENT, text)
    if isinstance(error, NotServed):
        return Failure(404, grpc.StatusCode.NOT_FOUND, text)
    if isinstance(error, NoSyncOutput):
        return Failure(400, grpc.StatusCode.FAILED_PRECONDITION, text)
    if isinstance(error, NotReady | KafkaUnavailable):
        return Failure(503, grpc.StatusCode.UNAVAILABLE, text)
    if isinstance(error, Overloaded):
        return Failure(503, grpc.StatusCode.RESOURCE_EXHAUSTED, text)
    if isinstance(error, DeadlineExceeded):
        return Failure(504, grpc.StatusCode.DEADLINE_EXCEEDED, text)
    if isinstance(error, RevisitLimitExceeded):
        return Failure(508, grpc.StatusCode.ABORTED, text)
    if isinstance(error, StepFailed):
        cause = error.__cause__
        if isinstance(cause, ModelCallFailed) and cause.fault is Fault.CALLER:
            return Failure(400, grpc.StatusCode.INVALID_ARGUMENT, text)
        if isinstance(cause, ModelCallFailed) and cause.fault is Fault.MISSING:
            return Failure(503, grpc.StatusCode.UNAVAILABLE, text)
        return Failure(500, grpc.StatusCode.INTERNAL, text)
    if isinstance(error, NoOutput | PipelineRunError):
        return Failure(500, grpc.StatusCode.INTERNAL, text)
    return None
