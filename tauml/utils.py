"""Small helpers shared across tauml."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Silence what C++ libraries (Pythia's and FastJet's banners) write to file descriptor 1."""
    try:
        saved = os.dup(1)
    except OSError:  # no real stdout (some embedded interpreters)
        yield
        return
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)
