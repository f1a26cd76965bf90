"""An example placement plug-in package (installable on its own; see its pyproject.toml)."""
