"""Progress bars through tqdm (a dependency), degrading to silence where tqdm is not installed
(e.g. a cluster image that got dil_fast with ``pip install --no-deps``): a missing progress bar
must never stop a training, a crop or a pack."""
from __future__ import annotations


def tqdm_available() -> bool:
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


class NullBar:
    """The part of tqdm's interface we use, doing nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(enabled: bool, **kwargs):
    """``tqdm(**kwargs)`` when ``enabled`` and tqdm is importable, else a :class:`NullBar`."""
    if enabled:
        try:
            from tqdm import tqdm
        except ImportError:
            return NullBar()
        return tqdm(**kwargs)
    return NullBar()
