"""Where a dataset lives: the dataset folder itself, or the builder's output that holds it."""

from __future__ import annotations

from pathlib import Path

__all__ = ["resolve_data_root"]


def resolve_data_root(path: str | Path, kind: str) -> Path:
    """Accept the dataset folder itself or the builder's output folder that holds it.

    ``kind`` is "medfake" or "medfakeinpaint"; ``data/embedded`` resolves to
    ``data/embedded/medfake`` (or ``.../medfakeinpaint``) when that subfolder exists.

    Raises:
        FileNotFoundError: ``path`` is not a folder.
    """
    path = Path(path)
    if (path / kind).is_dir():
        return path / kind
    if not path.is_dir():
        raise FileNotFoundError(
            f"data folder {path} not found; give the {kind} folder or the folder that holds it "
            "(e.g. the output of `python -m medfakedet.data.builder`)"
        )
    return path
