from __future__ import annotations

from tests.leakcheck import no_leaked_tasks

__all__ = ["no_leaked_tasks"]
