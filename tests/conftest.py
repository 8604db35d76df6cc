"""Fixtures shared by every test suite. Plain helpers live in `tests/helpers.py`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import pytest

from tests.helpers import (
    REPO_ROOT,
    ModelServerHandle,
    async_wait_until,
    free_port,
    start_model_servers,
    wait_until,
)

# The `router` fixture (a real `inferfront serve` process) for every test module.
pytest_plugins = ["tests.router"]

__all__ = [
    "REPO_ROOT",
    "ModelServerFactory",
    "ModelServerHandle",
    "async_wait_until",
    "free_port",
    "wait_until",
]


class ModelServerFactory:
    """Starts model server processes for one test and stops every one of them at teardown."""

    def __init__(self) -> None:
        self.handles: list[ModelServerHandle] = []

    def __call__(self, name: str = "r0", extra_args: Sequence[str] = ()) -> ModelServerHandle:
        return self.many([name], extra_args)[0]

    def many(self, names: Sequence[str], extra_args: Sequence[str] = ()) -> list[ModelServerHandle]:
        """Start several servers in parallel, e.g. `model_server.many(["r0", "r1"])`."""
        handles = start_model_servers(names, extra_args)
        self.handles.extend(handles)
        return handles

    def stop_all(self) -> None:
        # ExitStack runs every stop even if one raises, so no process is left behind.
        with contextlib.ExitStack() as stack:
            for handle in self.handles:
                stack.callback(handle.stop)
        self.handles.clear()


@pytest.fixture
def model_server() -> Iterator[ModelServerFactory]:
    """`model_server(name="r0", extra_args=())` -> ModelServerHandle (.port .url .pid .stats()
    .reset() .set_health(status) .kill() .stop()); all are stopped when the test ends."""
    factory = ModelServerFactory()
    try:
        yield factory
    finally:
        factory.stop_all()
