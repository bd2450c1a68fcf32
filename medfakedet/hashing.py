"""The one file hash of the project: sha256 in 1 MiB chunks (weights, uploads, init files)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """The file's sha256 as hex, read in 1 MiB chunks (any size, bounded memory)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
