"""LocalMembership on real files and real processes: flock semantics, clean-up of the dead, and
failover between front-end stand-ins (tests/cluster_member.py) when one is SIGKILLed."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferfront.cluster import LocalMembership, Member, MemberIdInUse
from tests.helpers import REPO_ROOT, async_wait_until

FAILOVER_BUDGET_S = 2.0
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0


def local(state_dir: Path, member_id: str, port: int = 7000) -> LocalMembership:
    return LocalMembership(state_dir, Member(member_id, f"127.0.0.1:{port}", time.time()))


# -- one process, several members: flock conflicts between descriptors, not only processes ----


async def test_members_see_each_other_and_leave_cleanly(tmp_path: Path) -> None:
    a, b = local(tmp_path, "fe-a", 7001), local(tmp_path, "fe-b", 7002)
    await a.join()
    assert [m.id for m in a.members()] == ["fe-a"]  # self, before any refresh
    await b.join()
    await a.refresh()
    assert a.members() == [a.member, b.member]
    info = json.loads((tmp_path / "members" / "fe-b.json").read_text())
    assert (info["id"], info["address"], info["pid"]) == ("fe-b", "127.0.0.1:7002", os.getpid())

    await b.leave()
    await a.refresh()
    assert a.members() == [a.member]
    assert sorted(os.listdir(tmp_path / "members")) == ["fe-a.json", "fe-a.lock"]


async def test_an_id_held_by_a_live_member_cannot_join_twice(tmp_path: Path) -> None:
    first = local(tmp_path, "fe-a")
    await first.join()
    twin = LocalMembership(tmp_path, Member("fe-a", "127.0.0.1:7009", 0.0), join_timeout_s=0.05)
    with pytest.raises(MemberIdInUse):
        await twin.join()
    await first.leave()
    await twin.join()  # free again
    assert twin.joined


async def test_a_lease_has_one_holder_and_is_free_again_on_release(tmp_path: Path) -> None:
    a, b = local(tmp_path, "fe-a", 7001), local(tmp_path, "fe-b", 7002)
    await a.join()
    await b.join()
    key = "endpoint-1/blue"

    assert await a.try_acquire(key)
    assert await a.try_acquire(key)  # already ours
    assert not await b.try_acquire(key)
    assert a.holds(key) and not b.holds(key)
    assert (tmp_path / "leases" / "endpoint-1%2Fblue.lock").exists()

    await b.refresh()
    seen = b.holder(key)
    assert seen is not None and (seen.holder_id, seen.address) == ("fe-a", "127.0.0.1:7001")
    assert seen == a.holder(key)

    await a.release(key)
    assert not a.holds(key) and a.holder(key) is None
    await b.refresh()
    assert b.holder(key) is None
    assert await b.try_acquire(key)
    await a.refresh()
    assert a.holder(key).holder_id == "fe-b"  # type: ignore[union-attr]


async def test_leave_releases_every_lease(tmp_path: Path) -> None:
    a, b = local(tmp_path, "fe-a"), local(tmp_path, "fe-b")
    await a.join()
    await b.join()
    for key in ("e/d0", "e/d1"):
        assert await a.try_acquire(key)
    await a.leave()
    assert not a.holds("e/d0") and a.members() == []
    assert await b.try_acquire("e/d0") and await b.try_acquire("e/d1")


async def test_files_left_by_a_dead_process_are_removed_by_the_next_refresh(
    tmp_path: Path,
) -> None:
    # What a crashed instance leaves behind: its files, with no lock on them.
    for directory, name, info in [
        ("members", "fe-dead", {"id": "fe-dead", "address": "127.0.0.1:1", "started_at": 1.0}),
        ("leases", "e%2Fd", {"key": "e/d", "holder_id": "fe-dead", "address": "x", "since": 1}),
    ]:
        (tmp_path / directory).mkdir(exist_ok=True)
        (tmp_path / directory / f"{name}.lock").touch()
        (tmp_path / directory / f"{name}.json").write_text(json.dumps(info))
    observer = local(tmp_path, "fe-observer")  # never joins: only looks
    await observer.refresh()
    assert observer.members() == []
    assert observer.holder("e/d") is None
    assert os.listdir(tmp_path / "members") == []
    assert os.listdir(tmp_path / "leases") == []


async def test_a_lease_whose_file_was_deleted_by_hand_is_given_up(tmp_path: Path) -> None:
    a = local(tmp_path, "fe-a")
    await a.join()
    assert await a.try_acquire("e/d")
    (tmp_path / "leases" / "e%2Fd.lock").unlink()  # someone else could now lock a new file
    await a.refresh()
    assert not a.holds("e/d")
    assert await a.try_acquire("e/d")  # on a file others can see


# -- real processes ----------------------------------------------------------------------------

KEYS = [f"endpoint-{i}/blue" for i in range(10)]


class MemberProcess:
    """A running tests.cluster_member; its JSON-line events are collected by a reader thread."""

    def __init__(self, state_dir: Path, member_id: str, wait_members: int) -> None:
        self.id = member_id
        command = [
            sys.executable,
            "-m",
            "tests.cluster_member",
            "--state-dir",
            str(state_dir),
            "--id",
            member_id,
            "--keys",
            ",".join(KEYS),
            "--wait-members",
            str(wait_members),
        ]
        self.process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        self._events: list[dict] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._lock:
                self._events.append(json.loads(line))

    def events(self) -> list[dict]:
        with self._lock:
            return list(self._events)

    def saw(self, event: str) -> bool:
        return any(e["event"] == event for e in self.events())

    def alive(self) -> bool:
        return self.process.poll() is None

    def held(self) -> set[str]:
        held: set[str] = set()
        for event in self.events():
            if event["event"] == "gain":
                held.add(event["key"])
            elif event["event"] == "loss":
                held.discard(event["key"])
        return held

    def gained_at(self, key: str) -> float:
        return max(e["t"] for e in self.events() if e["event"] == "gain" and e["key"] == key)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> None:
        """SIGTERM (SIGKILL if it hangs); every line it printed is read before returning."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait(timeout=STOP_TIMEOUT_S)
        self._reader.join(timeout=STOP_TIMEOUT_S)  # ends at end of file: the pipe is drained
        assert self.process.stdout is not None
        self.process.stdout.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator:
    started: list[MemberProcess] = []

    def start(member_id: str, wait_members: int = 3) -> MemberProcess:
        started.append(MemberProcess(tmp_path, member_id, wait_members))
        return started[-1]

    yield start
    with contextlib.ExitStack() as stack:
        for member in started:
            stack.callback(member.stop)


def holders(processes: list[MemberProcess]) -> dict[str, list[str]]:
    """For each key, the live processes that report holding it."""
    result: dict[str, list[str]] = {key: [] for key in KEYS}
    for process in processes:
        if process.alive():
            for key in process.held():
                result[key].append(process.id)
    return result


def one_holder_each(processes: list[MemberProcess]) -> dict[str, str] | None:
    """{key: holder id} if every key has exactly one live holder, else None (poll again)."""
    current = holders(processes)
    if any(len(ids) != 1 for ids in current.values()):
        return None
    return {key: ids[0] for key, ids in current.items()}


async def on_disk(state_dir: Path) -> tuple[list[str], dict[str, str | None]]:
    """Live member ids and lease holders as the files say (an observer that never joins)."""
    observer = local(state_dir, "zz-observer")
    await observer.refresh()
    seen = {key: observer.holder(key) for key in KEYS}
    ids = [m.id for m in observer.members()]
    return ids, {key: info.holder_id if info else None for key, info in seen.items()}


async def test_sigkilled_holder_fails_over_and_a_restart_takes_nothing(
    tmp_path: Path, spawn, record_property
) -> None:
    processes = [spawn(f"fe-{i}") for i in range(3)]
    await async_wait_until(
        lambda: all(p.saw("settled") for p in processes), START_TIMEOUT_S, message="settled"
    )
    assignment = await async_wait_until(lambda: one_holder_each(processes), message="one each")
    ids, on_file = await on_disk(tmp_path)
    assert ids == ["fe-0", "fe-1", "fe-2"]
    assert on_file == assignment
    print(f"initial assignment: {sorted(assignment.items())}")

    victim = max(processes, key=lambda p: len(p.held()))
    victim_keys = victim.held()
    survivors = [p for p in processes if p is not victim]
    killed_at = time.monotonic()
    victim.kill()

    after = await async_wait_until(
        lambda: one_holder_each(survivors), FAILOVER_BUDGET_S, message="survivors hold every key"
    )
    failover_s = max(
        next(p for p in survivors if p.id == after[key]).gained_at(key) - killed_at
        for key in victim_keys
    )
    record_property("failover_s", round(failover_s, 3))
    print(f"SIGKILL of {victim.id} ({len(victim_keys)} keys): failover in {failover_s:.3f} s")
    assert all(after[key] == assignment[key] for key in KEYS if key not in victim_keys)
    ids, on_file = await on_disk(tmp_path)
    assert (ids, on_file) == ([p.id for p in survivors], after)

    restarted = spawn(victim.id)
    await async_wait_until(lambda: restarted.saw("settled"), START_TIMEOUT_S, message="restart")
    everyone = [*survivors, restarted]
    assert one_holder_each(everyone) == after
    assert restarted.held() == set()  # stability: a (re)joining member takes nothing
    ids, on_file = await on_disk(tmp_path)
    assert (ids, on_file) == (["fe-0", "fe-1", "fe-2"], after)


async def test_a_stopped_member_hands_its_keys_over(tmp_path: Path, spawn) -> None:
    processes = [spawn(f"fe-{i}", wait_members=2) for i in range(2)]
    await async_wait_until(lambda: one_holder_each(processes), START_TIMEOUT_S, message="start")
    leaving, staying = processes
    had = leaving.held()
    leaving.stop()  # SIGTERM: resigns its leases (reporting each loss) and leaves
    assert had and leaving.held() == set()
    await async_wait_until(lambda: staying.held() == set(KEYS), message="all keys to the stayer")
    ids, on_file = await on_disk(tmp_path)
    assert (ids, set(on_file.values())) == (["fe-1"], {"fe-1"})
