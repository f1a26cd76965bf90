"""Limits on what users may declare, and on gRPC messages, shared by every process.

One rule ties them together: a resource the scheduler accepts must be able to reach every process
that receives it later (the agent that loads it, the CLI that lists it). So the scheduler refuses a
resource whose serialized size is above :data:`MAX_RESOURCE_BYTES`, and every gRPC endpoint of the
control plane, server and client alike, receives messages up to :data:`MAX_MESSAGE_BYTES`, which
leaves room for a few resources of the largest size in one message (a model status with several
versions, an agent's load request with its envelope). A request above :data:`MAX_MESSAGE_BYTES` is
refused by gRPC itself (``RESOURCE_EXHAUSTED``); one between the two limits by validation
(``INVALID_ARGUMENT``, naming the size and the limit).
"""

from __future__ import annotations

KIB = 1024
MIB = 1024 * KIB

# Names: DNS-1123 labels (Kubernetes resource names).
MAX_NAME_LENGTH = 63
# A capability/requirement tag such as "sklearn" or "mlserver-1.3.4".
MAX_CAPABILITY_LENGTH = 128
# Models one scheduler holds (unloaded ones included until their versions are gone): 3x the
# 30,000 measured in docs/benchmarks.md (Envoy memory per model).
MAX_MODELS = 100_000
# Replica counts of a model (replicas, minReplicas, maxReplicas) or a server (expectedReplicas, ...).
MAX_REPLICAS = 1_000
# A model's requested memory (memoryBytes): 1 PiB, far above any real server.
MAX_MEMORY_BYTES = 2**50
# Kubernetes metadata.generation becomes the first version number (a uint32 in ModelStatus).
MAX_GENERATION = 2**31 - 1
# Model autoscaling: the requests-in-flight threshold, and every window and cooldown.
MAX_LAG_THRESHOLD = 100_000
MAX_SCALING_WINDOW_S = 7 * 24 * 3600.0
# MLServer parallel workers per model (runtime info multiplies the memory placement reserves).
MAX_PARALLEL_WORKERS = 1_024
# storageUri, and any other URI-like string (secret names, explainer types).
MAX_URI_LENGTH = 4 * KIB
MAX_REQUIREMENTS = 64
MAX_PARAMETERS = 256
MAX_PARAMETER_NAME_LENGTH = 256
# How often each Envoy reports load (requests in flight) to the scheduler, in seconds.
MIN_LOAD_REPORT_INTERVAL_S = 0.1
MAX_LOAD_REPORT_INTERVAL_S = 60.0
# The serialized size of one resource (a Model or a ServerNotify).
MAX_RESOURCE_BYTES = 1 * MIB
# Every control-plane gRPC endpoint (scheduler API, agent service, CLI, agent, stack clients).
MAX_MESSAGE_BYTES = 16 * MIB

# The gRPC option (servers and channels) that applies MAX_MESSAGE_BYTES to what an endpoint receives.
# Sending stays unlimited (gRPC's default): the receiver decides, and the xDS server's responses to
# Envoy (every model's routes) may be larger than any one resource.
GRPC_RECEIVE_LIMIT: tuple[str, int] = ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)
