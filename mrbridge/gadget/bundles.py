"""Which Recon serves a connection: the bundle fixed at start, or one a client names inside the bundle folder."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from mrbridge.errors import MrbridgeError
from mrbridge.gadget.messages import ProtocolError, shown
from mrbridge.recon.pipeline import Recon

log = logging.getLogger(__name__)


class Bundles:
    """Where a connection's Recon comes from: a default fixed at start and, optionally, a folder of bundles
    that clients may name (one folder name each, never a path).

    root: the bundle folder (None: clients may not name bundles). default: the bundle used when the client
    names none (None: ``Recon()``). Both are the server operator's choice and checked now.
    """

    def __init__(self, root: str | Path | None = None, default: str | Path | None = None) -> None:
        self.root: Path | None = None
        if root is not None:
            resolved = Path(root).expanduser().resolve()
            if not resolved.is_dir():
                raise MrbridgeError(f"gadget: --bundles {root}: not a folder; expected the folder of run bundles")
            self.root = resolved
        self.default = Recon.load(default).eval() if default is not None else None

    @classmethod
    def from_environment(cls) -> Bundles:
        """``MRBRIDGE_GADGET_BUNDLES`` and ``MRBRIDGE_GADGET_BUNDLE`` (for the mode Gadgetron launches)."""
        return cls(os.environ.get("MRBRIDGE_GADGET_BUNDLES") or None, os.environ.get("MRBRIDGE_GADGET_BUNDLE") or None)

    def locate(self, name: str) -> Path:
        """The folder of the bundle a client named; ProtocolError (without server paths) if it is not one."""
        if self.root is None:
            raise ProtocolError(f"bundle {shown(name)} is not available: this server serves no named bundles "
                                "(started without --bundles)")
        unavailable = ProtocolError(f"bundle {shown(name)} is not available (a bundle is named by its folder "
                                    "name inside the server's bundle folder, not by a path)")
        if (not name or len(name) > 255 or name.startswith(".") or any(c in name for c in "/\\\0")
                or not name.isprintable()):
            raise unavailable
        try:
            path = (self.root / name).resolve(strict=True)
        except (OSError, RuntimeError):  # missing, a loop of links
            raise unavailable from None
        if path.parent != self.root or not path.is_dir():  # a symlink out of the folder, or not a folder
            raise unavailable
        return path

    def recon(self, name: str | None) -> Recon:
        """The Recon for a connection whose config names ``name`` (None or empty: the default)."""
        if not name:
            return self.default if self.default is not None else Recon().eval()
        path = self.locate(name)
        try:
            return Recon.load(path).eval()
        except (MrbridgeError, OSError, RuntimeError) as err:
            log.error("bundle %r: %s", name, err)
            text = str(err).replace(str(path), name).replace(str(self.root), "<bundles>")
            raise ProtocolError(f"bundle {shown(name)} could not be loaded: {text}") from None
