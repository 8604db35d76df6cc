"""The request listener: shared context for every client connection, and what happens after a
request ends (counters, access log)."""

from __future__ import annotations

import asyncio
from time import perf_counter
from typing import TYPE_CHECKING

from inferfront.proxy.client import ClientConnection
from inferfront.proxy.ids import RequestIds
from inferfront.proxy.mirror import MirrorSender
from inferfront.proxy.write_batch import WriteBatch

if TYPE_CHECKING:
    from inferfront.config import Limits
    from inferfront.endpoints import Endpoints, EndpointState
    from inferfront.proxy.exchange import Exchange
    from inferfront.telemetry.accesslog import AccessLog


DEADLINE_SWEEP_S = 0.02


class Proxy:
    def __init__(
        self,
        endpoints: Endpoints,
        limits: Limits,
        *,
        retries: int,
        access_log: AccessLog | None,
        instance: str | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.endpoints = endpoints
        self.limits = limits
        self.retries = retries
        self.access_log = access_log
        self.instance = instance
        self.ids = RequestIds()
        self.connections: set[ClientConnection] = set()
        self.writes = WriteBatch(self.loop)  # every client and replica write of a loop turn
        self.mirrors = MirrorSender(self.loop, limits.replay_buffer_bytes)
        self.server: asyncio.AbstractServer | None = None
        self._deadline_queues = endpoints.deadlines.by_timeout.values()
        self._sweep = self.loop.call_later(DEADLINE_SWEEP_S, self._sweep_deadlines)

    def _sweep_deadlines(self) -> None:
        """Fire the deadlines that have passed. One periodic callback instead of a timer per
        request (creating and cancelling a uvloop timer costs ~2 us on every request; a 504
        may come up to DEADLINE_SWEEP_S late instead)."""
        now = perf_counter()
        for deadlines in self._deadline_queues:
            while deadlines:
                exchange, deadline = next(iter(deadlines.items()))
                if deadline > now:
                    break
                del deadlines[exchange]
                exchange.on_deadline()
        self._sweep = self.loop.call_later(DEADLINE_SWEEP_S, self._sweep_deadlines)

    async def listen(
        self, host: str, port: int, reuse_port: bool = False
    ) -> asyncio.AbstractServer:
        self.server = await self.loop.create_server(
            lambda: ClientConnection(self),
            host,
            port,
            backlog=4096,
            reuse_address=True,
            reuse_port=reuse_port or None,
        )
        return self.server

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()

    def close(self) -> None:
        self._sweep.cancel()

    def idle_connections(self) -> list[ClientConnection]:
        return [c for c in self.connections if not c.exchanges]

    def busy(self) -> int:
        return sum(len(c.exchanges) for c in self.connections)

    def close_idle(self) -> None:
        for conn in self.idle_connections():
            conn._close()

    def mirror(self, exchange: Exchange, endpoint: EndpointState) -> None:
        target = endpoint.mirror_target()
        if target is not None:
            self.mirrors.start(exchange, target)

    def record(self, exchange: Exchange, status: int) -> None:
        deployment = exchange.deployment
        end = exchange.t_upstream_done or perf_counter()
        start = exchange.t_start or end
        granted = exchange.t_granted or end
        total = end - start
        queue = granted - start
        upstream = end - granted if exchange.t_granted else 0.0
        if deployment is not None:
            deployment.stats.record(status, queue, upstream, total)
        log = self.access_log
        if log is not None:
            log.log(
                request_id=exchange.request_id,
                endpoint=exchange.endpoint.name if exchange.endpoint is not None else None,
                deployment=deployment.name if deployment is not None else None,
                replica=exchange.replica_name,
                status=status,
                total_ms=total * 1000,
                queue_ms=queue * 1000,
                upstream_ms=upstream * 1000,
                method=exchange.method.decode("latin-1"),
                path=exchange.url.decode("latin-1"),
                client=exchange.client.peer,
                bytes_in=exchange.body_received,
                bytes_out=exchange.bytes_out,
                instance=self.instance,
                decided_by=exchange.decided_by or self.instance,
            )
