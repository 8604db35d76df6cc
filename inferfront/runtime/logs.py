"""Log lines about one replica: `[deployment/replica] message`, with both as structured fields."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any


class ReplicaLog(logging.LoggerAdapter):
    def __init__(self, logger: logging.Logger, deployment: str, replica: str) -> None:
        super().__init__(logger, {"deployment": deployment, "replica": replica})
        self.prefix = f"[{deployment}/{replica}] "

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        kwargs["extra"] = {**self.extra, **kwargs.get("extra", {})}  # type: ignore[dict-item]
        return self.prefix + str(msg), kwargs
