"""The privacy accountants: Rényi DP and privacy-loss distributions (``confide dp``)."""

from __future__ import annotations

from . import _native


def epsilon(q: float, sigma: float, steps: int, delta: float, accountant: str = "rdp") -> float:
    """ε of ``steps`` compositions of the Poisson-subsampled Gaussian mechanism with sampling
    rate ``q`` and noise multiplier ``sigma``, at ``delta``. ``accountant`` is ``"rdp"`` or
    ``"pld"``. Raises :class:`confide.AccountingError` for parameters outside their domain."""
    return _native.epsilon(q, sigma, steps, delta, accountant)


def sigma(target_epsilon: float, q: float, steps: int, delta: float, accountant: str = "rdp") -> float:
    """The smallest noise multiplier whose ε is at most ``target_epsilon``."""
    return _native.sigma(target_epsilon, q, steps, delta, accountant)
