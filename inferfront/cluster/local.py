"""Membership and leases for instances on one machine: flock'ed files in a state directory.

Layout (names are `encode_name(id or key)`):

    <state_dir>/members/<id>.lock   flock'ed (exclusive) by the member while it is alive
    <state_dir>/members/<id>.json   {"id", "address", "started_at", "pid"}
    <state_dir>/leases/<key>.lock   flock'ed by the lease holder while it holds the lease
    <state_dir>/leases/<key>.json   {"key", "holder_id", "address", "since"}

The kernel is the arbiter. A member is live, and a lease held, exactly while its .lock file is
flock'ed; the descriptor stays open for as long as that lasts. When a process dies, even by
SIGKILL, the kernel closes its descriptors and the locks are free at once: no timeout, no
heartbeat. Whoever next probes a free lock (a non-blocking flock that succeeds) removes the
dead holder's files. A probe holds a free lock for an instant, so a try_acquire racing it may
return False; the Elector simply tries again at its next tick (join() retries by itself).

Rules that make unlinking lock files safe:
* a .lock path is unlinked, and its .json written or removed, only by the process holding the
  flock of the file that path names;
* after taking a flock, the taker checks the path still names the locked file (fstat vs stat);
  if it was unlinked in between, the lock is worthless and the taker starts over.

Caveats: the state directory must be on a local file system (flock over NFS is emulated, if at
all). Descriptors are opened close-on-exec, so exec'd children never inherit a lock, but a bare
os.fork() child shares them and keeps them held until it exits too. Nobody must delete files in
the directory by hand; a refresh notices a held lease whose file vanished and reports it lost.
.json files are replaced atomically (tmp + rename) and not fsync'ed: they describe running
processes, and after a machine crash every lock is gone anyway.

File I/O runs in worker threads (`asyncio.to_thread`), serialized by one lock, so no call blocks
the event loop. Cached state is replaced, never mutated, by those threads only; the event loop
reads it without locking. A cancelled call still completes its file operation and its cache
update, so the cache always matches the locks actually held.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferfront.cluster.membership import LeaseInfo, Member

log = logging.getLogger("inferfront.cluster")

LOCK_SUFFIX = ".lock"
INFO_SUFFIX = ".json"
MEMBERS_DIR = "members"
LEASES_DIR = "leases"
LOCK_ATTEMPTS = 3  # retries when a lock file is unlinked under us; each retry is a fresh file
JOIN_TIMEOUT_S = 1.0
JOIN_RETRY_S = 0.01
MAX_NAME = 120  # encoded names longer than this are shortened with a hash (NAME_MAX is 255)
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


class MemberIdInUse(RuntimeError):
    """Another live process is a member under the same id."""


def encode_name(text: str) -> str:
    """A file-name-safe spelling of a lease key or member id, distinct for distinct texts.

    Lower-case letters, digits, '-', '_' and '.' stay; every other UTF-8 byte becomes %XX, '/'
    and upper-case letters included (so names stay distinct on case-insensitive file systems),
    and a leading '.' too (no hidden names, no '..'). A result longer than MAX_NAME keeps a
    readable prefix and ends in '~' + a hash ('~' never appears in an unshortened name)."""
    pieces = []
    for index, char in enumerate(text):
        if char in _PLAIN and not (index == 0 and char == "."):
            pieces.append(char)
        else:
            pieces.extend(f"%{byte:02X}" for byte in char.encode())
    name = "".join(pieces)
    if not name:
        raise ValueError("an empty key or member id has no file name")
    if len(name) > MAX_NAME:
        digest = hashlib.sha256(text.encode()).hexdigest()[:32]
        name = f"{name[: MAX_NAME - 33]}~{digest}"
    return name


# -- file primitives (worker threads only) -----------------------------------------------------


def _names_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd` (it was not unlinked or replaced)."""
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (opened.st_dev, opened.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _try_lock(path: Path, create: bool) -> int | None:
    """flock `path` exclusively without waiting: its open descriptor, or None if another
    descriptor holds the lock (or, with create=False, the file is gone)."""
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    for _ in range(LOCK_ATTEMPTS):
        try:
            fd = os.open(path, flags, 0o644)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        if _names_file(fd, path):
            return fd
        os.close(fd)  # unlinked between our open and flock by its previous holder: start over
        if not create:
            return None
    return None


def _remove_and_unlock(fd: int, lock_path: Path, info_path: Path) -> None:
    """Remove a lock's files while holding it (info first: a held lock never shows stale info
    from its previous holder), then drop the lock."""
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(info_path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)
    finally:
        os.close(fd)


def _write_info(path: Path, data: dict[str, Any]) -> None:
    """Replace `path` atomically, so a reader sees the old content or the new, never a part."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as stream:
            json.dump(data, stream)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _read_info(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as stream:
            data = json.load(stream)
    except (FileNotFoundError, ValueError):
        return None  # not written yet, or removed: known at a later refresh
    return data if isinstance(data, dict) else None


def _member_from(data: dict[str, Any] | None) -> Member | None:
    try:
        return Member(str(data["id"]), str(data["address"]), float(data["started_at"]))
    except (TypeError, KeyError, ValueError):
        return None


def _lease_from(data: dict[str, Any] | None) -> LeaseInfo | None:
    try:
        return LeaseInfo(
            str(data["key"]), str(data["holder_id"]), str(data["address"]), float(data["since"])
        )
    except (TypeError, KeyError, ValueError):
        return None


def _probe(lock_path: Path, info_path: Path) -> dict[str, Any] | None:
    """The info of a live lock; a free one is a dead holder's leftover and is removed."""
    fd = _try_lock(lock_path, create=False)
    if fd is None:
        return _read_info(info_path)
    _remove_and_unlock(fd, lock_path, info_path)
    return None


def _lock_files(directory: Path) -> list[Path]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return [directory / name for name in names if name.endswith(LOCK_SUFFIX)]


@dataclass(frozen=True)
class _Held:
    fd: int
    lock_path: Path
    info_path: Path
    info: LeaseInfo


class LocalMembership:
    """`Membership` over flock'ed files in `state_dir` (see the module docstring)."""

    def __init__(
        self, state_dir: Path, member: Member, *, join_timeout_s: float = JOIN_TIMEOUT_S
    ) -> None:
        self.state_dir = Path(state_dir)
        self._member = member
        self._member_name = encode_name(member.id)
        self._members_dir = self.state_dir / MEMBERS_DIR
        self._leases_dir = self.state_dir / LEASES_DIR
        self._join_timeout_s = join_timeout_s
        self._io = threading.Lock()  # one file operation at a time; never taken by the loop
        # Cached state: replaced (never mutated) by worker threads holding self._io.
        self._member_fd: int | None = None
        self._members: tuple[Member, ...] = ()
        self._holders: dict[str, LeaseInfo] = {}
        self._held: dict[str, _Held] = {}

    def __repr__(self) -> str:
        return f"LocalMembership({str(self.state_dir)!r}, {self._member!r})"

    @property
    def member(self) -> Member:
        return self._member

    @property
    def joined(self) -> bool:
        return self._member_fd is not None

    # -- reads: cached, never wait -------------------------------------------------------------

    def members(self) -> list[Member]:
        return list(self._members)

    def holds(self, key: str) -> bool:
        return key in self._held

    def holder(self, key: str) -> LeaseInfo | None:
        held = self._held.get(key)
        return held.info if held is not None else self._holders.get(key)

    # -- operations: file I/O in a worker thread -----------------------------------------------

    async def join(self) -> None:
        """Take this member's lock and publish its info. Waits up to `join_timeout_s` if the
        lock is busy (a prober holds it for an instant), then raises MemberIdInUse."""
        deadline = time.monotonic() + self._join_timeout_s
        while not await asyncio.to_thread(self._locked, self._join):
            if time.monotonic() >= deadline:
                raise MemberIdInUse(f"member id {self._member.id!r} is held by a live process")
            await asyncio.sleep(JOIN_RETRY_S)

    async def leave(self) -> None:
        await asyncio.to_thread(self._locked, self._leave)

    async def refresh(self) -> None:
        await asyncio.to_thread(self._locked, self._refresh)

    async def try_acquire(self, key: str) -> bool:
        return await asyncio.to_thread(self._locked, self._try_acquire, key)

    async def release(self, key: str) -> None:
        await asyncio.to_thread(self._locked, self._release, key)

    def _locked(self, operation: Any, *args: Any) -> Any:
        with self._io:
            return operation(*args)

    # -- worker-thread bodies (self._io held) --------------------------------------------------

    def _join(self) -> bool:
        if self._member_fd is not None:
            return True
        self._members_dir.mkdir(parents=True, exist_ok=True)
        lock_path, info_path = self._member_paths(self._member_name)
        fd = _try_lock(lock_path, create=True)
        if fd is None:
            return False
        member = self._member
        info = {
            "id": member.id,
            "address": member.address,
            "started_at": member.started_at,
            "pid": os.getpid(),
        }
        try:
            _write_info(info_path, info)
        except BaseException:
            _remove_and_unlock(fd, lock_path, info_path)
            raise
        self._member_fd = fd
        self._members = _sorted_members([*self._members, member])
        return True

    def _leave(self) -> None:
        for key in list(self._held):
            self._release(key)
        fd = self._member_fd
        if fd is None:
            return
        self._member_fd = None
        self._members = tuple(m for m in self._members if m.id != self._member.id)
        _remove_and_unlock(fd, *self._member_paths(self._member_name))

    def _try_acquire(self, key: str) -> bool:
        if key in self._held:
            return True
        self._leases_dir.mkdir(parents=True, exist_ok=True)
        lock_path, info_path = self._lease_paths(key)
        fd = _try_lock(lock_path, create=True)
        if fd is None:
            return False
        info = LeaseInfo(key, self._member.id, self._member.address, time.time())
        data = {"key": key, "holder_id": info.holder_id, "address": info.address}
        try:
            _write_info(info_path, {**data, "since": info.since})
        except BaseException:
            _remove_and_unlock(fd, lock_path, info_path)
            raise
        self._held = {**self._held, key: _Held(fd, lock_path, info_path, info)}
        return True

    def _release(self, key: str) -> None:
        held = self._held.get(key)
        if held is None:
            return
        self._held = {k: v for k, v in self._held.items() if k != key}
        self._holders = {k: v for k, v in self._holders.items() if k != key}
        _remove_and_unlock(held.fd, held.lock_path, held.info_path)

    def _refresh(self) -> None:
        self._check_own_files()
        # Leases before members: a lease holder joined before acquiring, so the member list
        # read afterwards contains every live holder seen here.
        holders = self._scan_leases()
        members = self._scan_members()
        live = {member.id: member for member in members}
        self._holders = {
            key: info
            for key, info in holders.items()
            if info.holder_id in live and live[info.holder_id].address == info.address
        }  # otherwise a new holder has not replaced its dead predecessor's info yet
        self._members = _sorted_members(members)

    def _scan_leases(self) -> dict[str, LeaseInfo]:
        mine = {held.lock_path.name for held in self._held.values()}
        holders: dict[str, LeaseInfo] = {}
        for lock_path in _lock_files(self._leases_dir):
            if lock_path.name in mine:
                continue  # our own (reported from self._held); probing would only cost syscalls
            info = _lease_from(_probe(lock_path, lock_path.with_suffix(INFO_SUFFIX)))
            if info is not None:
                holders[info.key] = info
        return holders

    def _scan_members(self) -> list[Member]:
        own_lock = self._member_name + LOCK_SUFFIX
        members = [self._member] if self._member_fd is not None else []
        for lock_path in _lock_files(self._members_dir):
            if lock_path.name == own_lock and self._member_fd is not None:
                continue
            member = _member_from(_probe(lock_path, lock_path.with_suffix(INFO_SUFFIX)))
            if member is not None:
                members.append(member)
        return members

    def _check_own_files(self) -> None:
        """Our locks are only as good as the names pointing at them. If someone deleted the
        files by hand, another process could take the same lock name: give up such leases
        (reported lost by the Elector) and re-publish our membership."""
        for key, held in list(self._held.items()):
            if not _names_file(held.fd, held.lock_path):
                log.error("lease %r: its lock file vanished; giving the lease up", key)
                self._held = {k: v for k, v in self._held.items() if k != key}
                os.close(held.fd)
        fd = self._member_fd
        if fd is not None and not _names_file(fd, self._member_paths(self._member_name)[0]):
            log.error("member %r: its lock file vanished; joining again", self._member.id)
            os.close(fd)
            self._member_fd = None
            if not self._join():
                log.error("member %r: id taken by another process", self._member.id)

    def _member_paths(self, name: str) -> tuple[Path, Path]:
        return self._members_dir / (name + LOCK_SUFFIX), self._members_dir / (name + INFO_SUFFIX)

    def _lease_paths(self, key: str) -> tuple[Path, Path]:
        name = encode_name(key)
        return self._leases_dir / (name + LOCK_SUFFIX), self._leases_dir / (name + INFO_SUFFIX)


def _sorted_members(members: list[Member]) -> tuple[Member, ...]:
    unique = {member.id: member for member in members}
    return tuple(unique[member_id] for member_id in sorted(unique))
