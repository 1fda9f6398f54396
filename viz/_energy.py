"""Per-token residual energies: the one implementation lives in ``resprune.residual``."""

from resprune.residual import residual_energies

__all__ = ["residual_energies"]
