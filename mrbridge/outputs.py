"""Output paths are checked before any work: never an input, always somewhere a file can be written.

Every command calls :func:`check_outputs` with what it reads and what it will write, so that a mistake such as
``convert gre.dat --seq gre.seq -o gre.dat`` is refused at once, naming both paths, instead of destroying a
measurement after a long computation.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from mrbridge.errors import InputError


def _same(a: Path, b: Path) -> bool:
    """The same file: one path, a symlink to the other, or a hard link (same device and inode)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_writable(label: str, path: Path) -> None:
    """``path`` can be created: its nearest existing ancestor is a writable folder, and it is not a folder itself.

    Raises InputError naming ``label`` (the option) and the path when a parent is a file, the place is not
    writable (e.g. under /proc), or the path is an existing folder.
    """
    if path.is_dir():
        raise InputError(f"{label} {path}: is a folder; expected a file name")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{label} {path}: {parent} is a file, not a folder; choose another output location")
    if not os.access(parent, os.W_OK | os.X_OK) or parent.resolve().parts[:2] in (("/", "proc"), ("/", "sys")):
        raise InputError(f"{label} {path}: {parent} is not writable; choose another output location")


def check_outputs(outputs: Mapping[str, Path | None], inputs: Mapping[str, Path | str | None],
                  *, folders: Iterable[str] = ()) -> None:
    """Refuse, before any work, outputs that would overwrite an input or cannot be written.

    outputs: option label → path it will write (None: not written), every file a command writes beside its main
    output included (e.g. ``export``'s ``safety.json``); ``folders``: the labels whose path is a folder the
    command fills (checked to be a folder that can be created). inputs: label → path read (None, or a
    non-path such as "builtin:brain", is ignored).
    """
    folder_labels = set(folders)
    files = {label: Path(p) for label, p in inputs.items() if p is not None and Path(p).is_file()}
    for label, out in outputs.items():
        if out is None:
            continue
        out = Path(out)
        if label in folder_labels:
            if out.exists() and not out.is_dir():
                raise InputError(f"{label} {out}: is a file; expected a folder")
            check_writable(label, out / "_")
            continue
        for in_label, src in files.items():
            if _same(out, src):
                raise InputError(f"{label} {out} would overwrite the input {in_label} ({src}); "
                                 "inputs are never modified: choose another output")
        check_writable(label, out)
