"""Errors raised while reading a configuration file."""

from __future__ import annotations

from collections.abc import Sequence

Location = tuple[str | int, ...]


class ConfigError(Exception):
    """The configuration cannot be used; `problems` holds one `FILE: PATH: MESSAGE` line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)


class RuleViolations(ValueError):
    """Several cross-field problems found by one model validator, each at its own location.

    Pydantic reports a validator's exception as a single error at the model's location; the loader
    unpacks this one (pydantic keeps it in the error's context) so every problem gets its own line
    and exact path. Built directly (without the loader) it still reads as a plain ValueError.
    """

    def __init__(self, violations: Sequence[tuple[Location, str]]) -> None:
        self.violations: list[tuple[Location, str]] = list(violations)
        super().__init__("; ".join(_describe(loc, message) for loc, message in self.violations))


def format_location(loc: Location) -> str:
    """`('endpoints', 0, 'traffic', 'blue')` -> `endpoints[0].traffic.blue`."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _describe(loc: Location, message: str) -> str:
    return f"{format_location(loc)}: {message}" if loc else message
