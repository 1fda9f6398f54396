"""The registered methods, one module per method or close family of methods (registration by import).

Add a method: one new module here with a ``@register(...)`` function, and one import line below.
"""

from . import baselines, cdpruner, cls, divprune, fastv, resprune, visionzip  # noqa: F401

__all__ = ["baselines", "cdpruner", "cls", "divprune", "fastv", "resprune", "visionzip"]
