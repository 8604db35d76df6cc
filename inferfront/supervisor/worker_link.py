"""The worker's end of the replica-event channel.

`SupervisorLink` keeps a connection to the supervisor and replays what it hears into the
worker's deployments through their `ReplicaEvents` methods, so a `DeploymentState` in a worker
sees exactly the calls a local runtime would make. `RemoteRuntime` stands in for the runtime
in a worker: the autoscaler and the proxy's failure reports work unchanged, and the replicas
stay with the supervisor.

Decisions worth knowing:
- Every snapshot (the first, and the one after each reconnect) reconciles: replicas missing from
  it are removed, new ones added, readiness and draining brought up to date. A replica whose
  address changed, or that stopped draining (it cannot: only a new replica of the same name
  could), is removed and added again.
- Callbacks are deduplicated against what the link last applied (no repeated `replica_ready`);
  a callback that raises is logged and does not break the link.
- For each draining replica the link reports this worker's in-flight count (from `inflight_of`,
  by default the deployment's own `replica_inflight`) at once, then on each change until it
  reaches zero, polled every `DRAIN_REPORT_POLL_S`: the supervisor waits for those reports
  before stopping the replica. After a reconnect the reports start over.
- Messages to the supervisor while disconnected are dropped (`scale_to` returns False): the
  autoscaler asks again on its next step, and failures are reported again by the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from inferfront.supervisor import channel
from inferfront.supervisor.channel import ChannelError, ReplicaRecord

log = logging.getLogger("inferfront.supervisor.link")

DRAIN_REPORT_POLL_S = 0.05
SCALE_ANSWER_TIMEOUT_S = 30.0
RECONNECT_BACKOFF_S = (0.05, 1.0)


class SupervisorLink:
    """Connects a worker to its supervisor and feeds replica events to `deployments`
    (deployment key "<endpoint>/<deployment>" -> an object with the ReplicaEvents methods)."""

    def __init__(
        self,
        state_dir: Path | str,
        deployments: Mapping[str, Any],
        *,
        inflight_of: Callable[[str, str], int] | None = None,
        on_snapshot: Callable[[], None] | None = None,
        reconnect_backoff_s: tuple[float, float] = RECONNECT_BACKOFF_S,
    ) -> None:
        self.socket_path = channel.socket_path(state_dir)
        self.deployments = dict(deployments)
        # What this worker has applied, per deployment key: the source of RemoteRuntime's counts.
        self.replicas: dict[str, dict[str, ReplicaRecord]] = {key: {} for key in deployments}
        self.snapshots = 0  # snapshots applied (1 + reconnects)
        self._inflight_of = inflight_of or self._deployment_inflight
        self._on_snapshot = on_snapshot
        self._backoff = reconnect_backoff_s
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._first_snapshot = asyncio.Event()
        self._reporters: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._answers: dict[int, asyncio.Future[bool]] = {}
        self._next_seq = 0
        self._closed = False
        self._unknown_keys: set[str] = set()

    # --- public ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def connect(self, timeout: float = 30.0) -> None:
        """Connect (retrying while the supervisor is not there yet) and return once the first
        snapshot is applied. Keeps reconnecting in the background afterwards. ConnectionError
        (and the link closed) if no snapshot arrives within `timeout` seconds."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="supervisor-link")
        snapshot = asyncio.ensure_future(self._first_snapshot.wait())
        done, _ = await asyncio.wait(
            {snapshot, self._task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if snapshot in done:
            return
        snapshot.cancel()
        task = self._task
        failure = task.exception() if task.done() and not task.cancelled() else None
        await self.close()
        raise ConnectionError(
            f"no replica snapshot from the supervisor at {self.socket_path} within {timeout} s"
        ) from failure

    async def close(self) -> None:
        """Disconnect for good. Replicas are left as they are (the supervisor owns them)."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._disconnected()

    def report_failure(self, key: str, name: str) -> None:
        self._send(channel.report_failure(key, name))

    async def scale_to(self, key: str, count: int) -> bool:
        """Ask the supervisor for `count` replicas; True once it has applied that (or a later)
        request, and the resulting added/draining events have been applied here. False if
        disconnected or unanswered within SCALE_ANSWER_TIMEOUT_S."""
        self._next_seq += 1
        seq = self._next_seq
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._answers[seq] = answer
        try:
            if not self._send(channel.scale_to(key, count, seq)):
                return False
            try:
                return await asyncio.wait_for(asyncio.shield(answer), SCALE_ANSWER_TIMEOUT_S)
            except TimeoutError:
                log.warning("deployment %s: the supervisor did not answer scale_to(%d)", key, count)
                return False
        finally:
            self._answers.pop(seq, None)

    def report_inflight(self, key: str, name: str, count: int) -> None:
        """This worker's requests in flight on a replica (the supervisor keeps the latest)."""
        self._send(channel.inflight(key, name, count))

    # --- the connection -------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self._backoff[0]
        while not self._closed:
            try:
                reader, writer = await asyncio.open_unix_connection(
                    str(self.socket_path), limit=channel.SNAPSHOT_LINE_LIMIT
                )
            except OSError as exc:
                log.debug("supervisor not reachable at %s: %s", self.socket_path, exc)
            else:
                try:
                    await self._session(reader, writer)
                except (OSError, ValueError, ChannelError) as exc:
                    log.warning("connection to the supervisor failed: %s", exc)
                finally:
                    self._disconnected()
                if self._first_snapshot.is_set():
                    log.warning("lost the connection to the supervisor: reconnecting")
                delay = self._backoff[0]
            # Retry pacing, not synchronisation: the supervisor may be starting or restarting.
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff[1])

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        while True:
            message = await channel.read_message(reader)
            if message is None:
                return
            try:
                self._apply(message)
            except (KeyError, TypeError, ValueError, ChannelError) as exc:
                log.warning("ignoring a bad message from the supervisor %r: %s", message, exc)

    def _disconnected(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        for task in self._reporters.values():
            task.cancel()
        self._reporters.clear()
        for answer in self._answers.values():
            if not answer.done():
                answer.set_result(False)

    def _send(self, message: channel.Message) -> bool:
        writer = self._writer
        if writer is None or writer.is_closing():
            log.debug("not connected to the supervisor: dropped %s", message)
            return False
        writer.write(channel.encode(message))
        return True

    # --- applying what the supervisor says ------------------------------------------------

    def _apply(self, message: channel.Message) -> None:
        kind = message["type"]
        if kind == "snapshot":
            self._apply_snapshot(message)
            return
        key = message.get("deployment")
        if kind == "scaled":
            answer = self._answers.get(int(message.get("seq", -1)))
            if answer is not None and not answer.done():
                answer.set_result(True)
            return
        if key not in self.deployments:
            self._note_unknown(key)
            return
        name = str(message["name"])
        if kind == "added":
            wanted = ReplicaRecord(name, str(message["host"]), int(message["port"]))
            self._reconcile(key, wanted)
        elif kind == "ready":
            self._set_ready(key, name, bool(message["ready"]))
        elif kind == "draining":
            self._set_draining(key, name)
        elif kind == "removed":
            self._remove(key, name)
        else:
            log.debug("ignoring message type %r", kind)

    def _apply_snapshot(self, message: channel.Message) -> None:
        deployments = message.get("deployments")
        if not isinstance(deployments, dict):
            raise ChannelError("snapshot without deployments")
        for key in deployments:
            if key not in self.deployments:
                self._note_unknown(key)
        for key in self.deployments:
            wanted = [ReplicaRecord.from_wire(doc) for doc in deployments.get(key, [])]
            names = {record.name for record in wanted}
            for name in [n for n in self.replicas[key] if n not in names]:
                self._remove(key, name)
            for record in wanted:
                self._reconcile(key, record)
        self.snapshots += 1
        self._first_snapshot.set()
        for key, records in self.replicas.items():
            for record in records.values():
                if record.draining:
                    self._start_reporting(key, record.name)
        if self._on_snapshot is not None:
            try:
                self._on_snapshot()
            except Exception:
                log.exception("on_snapshot callback failed")

    def _reconcile(self, key: str, wanted: ReplicaRecord) -> None:
        have = self.replicas[key].get(wanted.name)
        if have is not None and (
            (have.host, have.port) != (wanted.host, wanted.port)
            or (have.draining and not wanted.draining)
        ):
            self._remove(key, wanted.name)
            have = None
        if have is None:
            self.replicas[key][wanted.name] = ReplicaRecord(wanted.name, wanted.host, wanted.port)
            self._call(key, "replica_added", wanted.name, wanted.host, wanted.port)
        self._set_ready(key, wanted.name, wanted.ready)
        if wanted.draining:
            self._set_draining(key, wanted.name)

    def _set_ready(self, key: str, name: str, ready: bool) -> None:
        record = self.replicas[key].get(name)
        if record is None or record.draining or record.ready == ready:
            return
        record.ready = ready
        self._call(key, "replica_ready", name, ready)

    def _set_draining(self, key: str, name: str) -> None:
        record = self.replicas[key].get(name)
        if record is None or record.draining:
            return
        record.draining = True
        self._call(key, "replica_draining", name)
        if self._first_snapshot.is_set():  # during a snapshot, reporting starts after it
            self._start_reporting(key, name)

    def _remove(self, key: str, name: str) -> None:
        if self.replicas[key].pop(name, None) is None:
            return
        reporter = self._reporters.pop((key, name), None)
        if reporter is not None:
            reporter.cancel()
        self._call(key, "replica_removed", name)

    def _call(self, key: str, method: str, *args: Any) -> None:
        try:
            getattr(self.deployments[key], method)(*args)
        except Exception:
            log.exception("deployment %s: %s%r failed", key, method, args)

    def _note_unknown(self, key: object) -> None:
        if key not in self._unknown_keys:
            self._unknown_keys.add(str(key))
            log.warning("the supervisor knows deployment %r, this worker does not", key)

    # --- in-flight reports for draining replicas ------------------------------------------

    def _start_reporting(self, key: str, name: str) -> None:
        replica = (key, name)
        if replica not in self._reporters and self.connected:
            self._reporters[replica] = asyncio.create_task(
                self._report_until_idle(key, name), name=f"drain-report-{key}-{name}"
            )

    async def _report_until_idle(self, key: str, name: str) -> None:
        """Report at once, then on each change, until zero has been reported."""
        sent: int | None = None
        try:
            while True:
                count = self._safe_inflight(key, name)
                if count != sent and self._send(channel.inflight(key, name, count)):
                    sent = count
                if sent is not None and sent <= 0:
                    return
                # Polling a count; the supervisor's drain deadline bounds how long it matters.
                await asyncio.sleep(DRAIN_REPORT_POLL_S)
        finally:
            if self._reporters.get((key, name)) is asyncio.current_task():
                del self._reporters[(key, name)]

    def _safe_inflight(self, key: str, name: str) -> int:
        try:
            return max(int(self._inflight_of(key, name)), 0)
        except Exception:
            log.exception("deployment %s: in-flight count of %s failed", key, name)
            return 0

    def _deployment_inflight(self, key: str, name: str) -> int:
        counter = getattr(self.deployments.get(key), "replica_inflight", None)
        return counter(name) if counter is not None else 0


class RemoteRuntime:
    """A `ReplicaRuntime` for a worker: the replicas live in the supervisor."""

    def __init__(self, link: SupervisorLink, key: str) -> None:
        self.link = link
        self.key = key

    async def start(self) -> None:
        """Nothing to start: the supervisor runs the replicas."""

    async def scale_to(self, count: int) -> None:
        if count < 0:
            raise ValueError("replica count must not be negative")
        await self.link.scale_to(self.key, count)

    async def stop(self, timeout: float) -> None:
        """Nothing to stop: replicas outlive workers."""

    def report_failure(self, name: str) -> None:
        self.link.report_failure(self.key, name)

    @property
    def current(self) -> int:
        """Replicas that exist, draining ones excluded."""
        return sum(1 for r in self._records() if not r.draining)

    @property
    def starting(self) -> int:
        """Replicas not (or no longer) ready, draining ones excluded."""
        return sum(1 for r in self._records() if not r.ready and not r.draining)

    def _records(self) -> list[ReplicaRecord]:
        return list(self.link.replicas.get(self.key, {}).values())
