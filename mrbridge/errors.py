"""User-facing errors. The CLI prints their message and exits with code 2 (tracebacks only with --debug).

Every message names where the problem is (file, field), the offending value and what was expected.
"""

from __future__ import annotations

from pydantic import ValidationError


class MrbridgeError(Exception):
    """Base class of every mistake a user can make (bad file, bad field, bad value)."""


class ConfigError(MrbridgeError):
    """A protocol, task or system file that does not validate."""


class InputError(MrbridgeError):
    """A data file (twin, maps, raw data, .seq) that cannot be used as given."""


def where(source: str | None, field: str) -> str:
    """Format 'file: field' (or just the field) for error messages."""
    return f"{source}: {field}" if source else field


def validation_message(error: ValidationError, source: str) -> str:
    """One line for the first problem pydantic found: "source: field 'a.b' = value: what was expected"."""
    first = error.errors()[0]
    field = ".".join(str(p) for p in first["loc"])
    return f"{source}: field '{field}' = {first.get('input')!r}: {first['msg']}"
