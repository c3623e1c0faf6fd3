"""Read a YAML configuration file; every failure is one ConfigError line naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mrbridge.errors import ConfigError


def load_yaml(path: str | Path) -> Any:
    """The parsed content of ``path`` (ConfigError: missing, unreadable, or not YAML, with line and column)."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read ({err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{path}: not valid YAML{at}: {problem}") from None
