"""lines.yaml files and isolated environments for benches that run linepicker as a user would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common import clean_env


def write_config(path: Path, urls: dict[str, str], policy: dict[str, Any] | None = None, **probe: Any) -> Path:
    """A config with only lines, probe and policy settings: no targets, so nothing outside `path`'s directory is written.

    JSON is valid YAML, so no YAML library is needed to write it.
    """
    document = {"probe": probe, "policy": policy or {}, "lines": [{"name": name, "url": url} for name, url in urls.items()]}
    path.write_text(json.dumps(document, indent=1))
    return path


def isolated_env(home: Path) -> dict[str, str]:
    """The environment for a linepicker child: its own HOME and XDG dirs, so no user file is read or written."""
    home.mkdir(parents=True, exist_ok=True)
    return clean_env(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_DATA_HOME=str(home / "data"),
        XDG_STATE_HOME=str(home / "state"),
        XDG_CACHE_HOME=str(home / "cache"),
        SHELL="/bin/bash",
    )
