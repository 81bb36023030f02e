"""tauml: foundation models for hadronic tau reconstruction, in Jupyter.

The library does the work; the numbered notebooks in ``notebooks/`` tell the story.
See README.md for the two commands (``make demo``, ``make test``) and docs/ for the physics.
"""

from tauml.config import ConfigError, Preset, get_preset

__version__ = "0.1.0"
__all__ = ["ConfigError", "Preset", "__version__", "get_preset"]
