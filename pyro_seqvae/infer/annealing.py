"""KL annealing: the weight ``beta`` of the KL term as a function of the update count."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class LinearKLSchedule:
    """``beta(step) = min(end, start + increment * step)``.

    The SRNN paper (sec. 5) raises beta from 0.2 to 1 by 0.0001 or 0.0003 per update; the
    default here is 0.0003 (1 is reached after 2,667 updates). Applied with
    ``poutine.scale(scale=beta)`` around the ``z_t`` sites of model and guide, it multiplies
    exactly the KL part of the ELBO. ``increment=0`` with ``start=1`` turns annealing off.

    :param float start: beta at update 0 (in ``(0, 1]``).
    :param float increment: added per update (``>= 0``).
    :param float end: the final beta (1).
    """

    start: float = 0.2
    increment: float = 3e-4
    end: float = 1.0

    def __post_init__(self):
        if not 0.0 < self.start <= self.end:
            raise ConfigError(f"beta start must be in (0, end={self.end}], got {self.start}")
        if not 0 <= self.increment < float("inf"):
            raise ConfigError(f"beta increment must be a finite number >= 0, got "
                              f"{self.increment}")

    def __call__(self, step: int) -> float:
        return min(self.end, self.start + self.increment * step)
