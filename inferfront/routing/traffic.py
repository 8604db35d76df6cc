"""An endpoint's traffic split between its deployments, and its mirror traffic.

Pure and deterministic: no clock, no randomness, so a given sequence of requests always goes to
the same deployments and tests can assert exact counts.
"""

from __future__ import annotations

from collections.abc import Mapping


class TrafficSplit:
    """Chooses the deployment for each request in proportion to its weight (percent).

    Smooth weighted round-robin (nginx's algorithm): every pick adds each weight to its running
    score, takes the highest score and subtracts the total from it. The sequence repeats every
    `total` picks with exact counts in each period, and picks of one deployment are spread out
    rather than bunched (50/50 alternates strictly).
    """

    __slots__ = ("_current", "_names", "_total", "_weights", "weights")

    def __init__(self, weights: Mapping[str, int]) -> None:
        for name, weight in weights.items():
            if weight < 0:
                raise ValueError(f"deployment {name}: weight must not be negative, got {weight}")
        self.weights: dict[str, int] = dict(weights)
        # Zero-weight deployments are dropped so they can never be chosen; the order of the
        # mapping decides ties, which keeps the sequence deterministic.
        chosen = [(name, weight) for name, weight in weights.items() if weight > 0]
        self._names: tuple[str, ...] = tuple(name for name, _ in chosen)
        self._weights: tuple[int, ...] = tuple(weight for _, weight in chosen)
        self._current: list[int] = [0] * len(chosen)
        self._total = sum(self._weights)

    def pick(self) -> str | None:
        """The deployment for the next request, or None when no deployment has positive weight."""
        if not self._total:
            return None
        current = self._current
        weights = self._weights
        best = 0
        best_score = current[0] + weights[0]
        current[0] = best_score
        for index in range(1, len(weights)):
            score = current[index] + weights[index]
            current[index] = score
            if score > best_score:  # strict: the earlier deployment wins ties
                best, best_score = index, score
        current[best] = best_score - self._total
        return self._names[best]


class Mirror:
    """Picks the requests whose copy goes to the mirror deployment: exactly `percent` of calls.

    An accumulator (Bresenham style) spreads the mirrored calls evenly: each call adds `percent`,
    and a call mirrors when the sum reaches 100, which then drops by 100.
    """

    __slots__ = ("_accumulated", "deployment", "percent")

    def __init__(self, deployment: str | None, percent: int) -> None:
        if not 0 <= percent <= 100:
            raise ValueError(f"mirror percent must be within 0..100, got {percent}")
        self.deployment = deployment
        self.percent = percent if deployment is not None else 0
        self._accumulated = 0

    def take(self) -> str | None:
        """The mirror deployment if this call is mirrored, else None."""
        if not self.percent:
            return None
        self._accumulated += self.percent
        if self._accumulated < 100:
            return None
        self._accumulated -= 100
        return self.deployment
