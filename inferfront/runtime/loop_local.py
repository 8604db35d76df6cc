"""State kept once per event loop: what every deployment in a process shares (probe results,
server watches), made on first use in a loop and dropped with the loop."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, Self
from weakref import WeakKeyDictionary


class LoopLocal:
    """Base for classes with one instance per running event loop (`for_running_loop()`)."""

    _by_loop: ClassVar[WeakKeyDictionary[asyncio.AbstractEventLoop, Any]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._by_loop = WeakKeyDictionary()  # one registry per subclass

    @classmethod
    def for_running_loop(cls) -> Self:
        loop = asyncio.get_running_loop()
        instance = cls._by_loop.get(loop)
        if instance is None:
            instance = cls._by_loop[loop] = cls()
        return instance
