"""``least-loaded``: an example placement plug-in built from meshserve's policy building blocks."""

from .policy import by_load, least_loaded, load

__all__ = ["by_load", "least_loaded", "load"]
