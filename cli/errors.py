"""The one exception type commands raise; ``cli.main`` turns it into ``Error: ...`` and exit 1."""

from __future__ import annotations


class CliError(Exception):
    """A failure to report to the user; the message is printed as is after ``Error: ``."""
