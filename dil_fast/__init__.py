"""dil_fast: fast DIL (Distortion-Invariant representation Learning) training for image restoration."""

from ._version import __version__

__all__ = ["__version__", "info"]


def info() -> dict:
    """Versions, backends and devices this installation can use (see ``dil-fast info``)."""
    from ._info import collect

    return collect()
