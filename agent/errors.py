"""Domain errors of the agent; their message is what the scheduler sees in LOAD_FAILED/UNLOAD_FAILED."""

from __future__ import annotations


class AgentError(Exception):
    """A model operation failed for a reason worth reporting to the scheduler."""


class ArtifactError(AgentError):
    """The model artifact could not be fetched or has an unusable layout."""


class ModelSettingsError(AgentError):
    """model-settings.json could not be read, generated or written."""


class MLServerError(AgentError):
    """MLServer refused a request or could not be reached; carries MLServer's own error text."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
