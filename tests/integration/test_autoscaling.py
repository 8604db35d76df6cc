"""Autoscaling acceptance on real processes: a router (`inferfront serve`) starting the test model
server as its command replicas, real clients looping requests through it, and the admin API
(`/admin/v1/deployments` -> `scaling`) as the observer.

Every replica is named after its port (`--name r{port}`), so an answer tells which replica (and,
through the admin API, which address) served it. Measured numbers (time to 6 replicas, time held
after the load stopped, cold start) are attached with `record_property` and written into the
assertion messages, so they are reported with or without `-s`.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.helpers import REPO_ROOT, wait_until
from tests.router import RouterFactory, RouterHandle, endpoint_config

MODEL_SERVER = [
    "python",
    "-m",
    "tests.servers.model_server",
    "--port",
    "{port}",
    "--name",
    "r{port}",
]
ENDPOINT = "scaled"
DEPLOYMENT = "blue"
SCORE_URL = f"/api/v1/endpoint/{ENDPOINT}/score"
# Probes of a replica that is up once it listens: fast, so readiness follows the process.
FAST_READINESS = {
    "path": "/",
    "initial_delay": 0,
    "period": 0.5,
    "timeout": 2,
    "failure_threshold": 3,
}
# Patient limits: a request waits for a replica rather than failing while replicas start.
PATIENT_REQUESTS = {"request_timeout_ms": 30000, "max_queue_wait_ms": 20000}
WAIT = 30.0  # deadline for conditions that only need the machine to get round to them
POLL = 0.05  # admin polling interval


def scaled_config(
    scale: dict[str, Any],
    *,
    request_settings: dict[str, Any] | None = None,
    command: list[str] | None = None,
    **deployment: Any,
) -> dict[str, Any]:
    """One endpoint, one autoscaled deployment of model server replicas started by the router."""
    settings = {"type": "target_utilization", "polling_interval": 1, **scale}
    deployment.setdefault("readiness_probe", FAST_READINESS)
    return endpoint_config(
        name=ENDPOINT,
        deployment=DEPLOYMENT,
        command=command or MODEL_SERVER,
        cwd=str(REPO_ROOT),
        request_settings={**PATIENT_REQUESTS, **(request_settings or {})},
        scale_settings=settings,
        server={"access_log": False},
        **deployment,
    )


def scaling(handle: RouterHandle) -> dict[str, Any]:
    return handle.deployment(ENDPOINT, DEPLOYMENT)["scaling"]


def replicas(handle: RouterHandle) -> list[dict[str, Any]]:
    return handle.deployment(ENDPOINT, DEPLOYMENT)["replicas"]


def answer_name(replica: dict[str, Any]) -> str:
    """The name a replica (admin view) puts in its answers: `r` and its port."""
    return "r" + replica["address"].rsplit(":", 1)[1]


def wait_scaling(
    handle: RouterHandle, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str
) -> dict[str, Any]:
    """Poll the autoscaler's snapshot until `predicate` holds; the snapshot that satisfied it."""

    def satisfied() -> dict[str, Any] | None:
        snapshot = scaling(handle)
        return snapshot if predicate(snapshot) else None

    return wait_until(satisfied, timeout=timeout, interval=POLL, message=what)


# -- load --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    started: float  # time.monotonic()
    ended: float
    status: int  # 0: no HTTP answer at all (the error says why)
    replica: str = ""
    error: str = ""


@dataclass
class Load:
    """`clients` threads, each looping requests through the router until stopped."""

    url: str
    clients: int
    query: str = "delay_ms=100"
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._client, daemon=True, name=f"load-{i}")
            for i in range(self.clients)
        ]

    def start(self) -> float:
        for thread in self._threads:
            thread.start()
        return time.monotonic()

    def stop(self) -> float:
        """Stop looping and wait for every request in flight; when the last one ended."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        return time.monotonic()

    def statuses(self) -> Counter[int]:
        with self._lock:
            return Counter(outcome.status for outcome in self.outcomes)

    def replicas_serving(self) -> set[str]:
        with self._lock:
            return {outcome.replica for outcome in self.outcomes if outcome.replica}

    def failures(self) -> list[Outcome]:
        with self._lock:
            return [outcome for outcome in self.outcomes if outcome.status != 200]

    def _client(self) -> None:
        with httpx.Client(timeout=60.0) as client:
            while not self._stop.is_set():
                self._record(self._one(client))

    def _one(self, client: httpx.Client) -> Outcome:
        started = time.monotonic()
        try:
            response = client.post(f"{self.url}{SCORE_URL}?{self.query}", json={"x": 1})
        except httpx.HTTPError as exc:
            return Outcome(started, time.monotonic(), 0, error=repr(exc))
        replica = response.json().get("replica", "") if response.status_code == 200 else ""
        return Outcome(
            started,
            time.monotonic(),
            response.status_code,
            replica,
            "" if response.status_code == 200 else response.text[:200],
        )

    def _record(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)


@pytest.fixture
def loads() -> Iterator[list[Load]]:
    """Loads a test starts; any still running at teardown are stopped."""
    started: list[Load] = []
    yield started
    for load in started:
        load.stop()


def start_load(loads: list[Load], handle: RouterHandle, clients: int, **kwargs: Any) -> Load:
    load = Load(handle.url, clients, **kwargs)
    loads.append(load)
    load.start()
    return load


def assert_no_failures(load: Load) -> None:
    failures = load.failures()
    assert not failures, (
        f"{len(failures)} failed requests (statuses {load.statuses()}): {failures[:3]}"
    )


# -- scale out and back --------------------------------------------------------------------------


def start_one_to_eight(router: RouterFactory, scale_down_delay_s: float) -> RouterHandle:
    """A router whose deployment scales between 1 and 8 replicas at 70% target utilization;
    returned once its first replica is ready."""
    handle = router(
        scaled_config(
            {
                "min_instances": 1,
                "max_instances": 8,
                "target_utilization_percentage": 70,
                "scale_down_delay_s": scale_down_delay_s,
            }
        )
    )
    wait_scaling(handle, lambda s: s["ready"] == 1, WAIT, "the first replica is ready")
    return handle


def test_burst_scales_out_within_seconds_and_back_after_the_stable_window(
    router: RouterFactory, loads: list[Load], record_property: Callable[[str, Any], None]
) -> None:
    delay_s = 4.0
    handle = start_one_to_eight(router, delay_s)

    load = start_load(loads, handle, clients=6)
    started = time.monotonic()
    wait_scaling(
        handle, lambda s: s["current"] >= 6, 3.0, "6 replicas within 3 s of the load starting"
    )
    to_six = time.monotonic() - started
    wait_scaling(handle, lambda s: s["ready"] >= 6, WAIT, "6 replicas ready")
    to_six_ready = time.monotonic() - started
    peak = wait_scaling(
        handle,
        lambda s: s["ready"] == s["current"] == s["desired"],
        WAIT,
        "every replica asked for is ready",
    )["current"]
    wait_until(
        lambda: len(load.replicas_serving()) >= 6,
        timeout=WAIT,
        interval=POLL,
        message="6 different replicas answered",
    )
    served = load.statuses()[200]

    stopped = load.stop()
    wait_scaling(handle, lambda s: s["current"] < peak, delay_s + WAIT, "the first scale-down")
    held = time.monotonic() - stopped
    wait_scaling(handle, lambda s: s["current"] == 1, WAIT, "back to min_instances (1)")
    back_to_one = time.monotonic() - stopped

    measured = (
        f"6 replicas launched after {to_six:.2f} s and ready after {to_six_ready:.2f} s "
        f"(peak {peak}, {served} requests served under load); after the load stopped "
        f"the count held {held:.2f} s and was back to 1 after {back_to_one:.2f} s"
    )
    for name, value in (
        ("time_to_6_replicas_s", to_six),
        ("time_to_6_ready_s", to_six_ready),
        ("held_after_load_s", held),
        ("back_to_1_s", back_to_one),
    ):
        record_property(name, round(value, 3))
    print(measured)
    assert peak >= 6, measured
    # The stable window is counted in whole polling intervals aligned on the clock, so the
    # last loaded interval may fall out of it up to one interval early; 0.2 s allows for the
    # router seeing the last request end a little before this process does.
    assert held >= delay_s - 1.0 - 0.2, measured
    assert_no_failures(load)
    assert served > 0


def test_steady_load_keeps_the_replica_count(
    router: RouterFactory, loads: list[Load], record_property: Callable[[str, Any], None]
) -> None:
    delay_s = 2.0
    handle = start_one_to_eight(router, delay_s)

    # Two clients are at most 2 replicas' worth of demand, and well over 1.4: the need stays
    # ceil(demand / 0.7) = 3 whatever the client's pace.
    load = start_load(loads, handle, clients=2)
    settled = wait_scaling(
        handle, lambda s: s["current"] == s["ready"] == 3, WAIT, "the initial ramp to 3 replicas"
    )
    observed: list[tuple[int, int]] = []
    until = time.monotonic() + 3 * delay_s + 1.0  # three stable windows and a polling interval
    while time.monotonic() < until:
        snapshot = scaling(handle)
        observed.append((snapshot["current"], snapshot["decisions_total"]))
        time.sleep(POLL)  # pacing the observation, not waiting for anything
    load.stop()

    counts = Counter(current for current, _ in observed)
    record_property("steady_replicas", dict(counts))
    assert counts == Counter({3: len(observed)}), f"the count moved under steady load: {counts}"
    assert {total for _, total in observed} == {settled["decisions_total"]}
    assert_no_failures(load)


# -- to zero and back ------------------------------------------------------------------------


def test_idle_deployment_goes_to_zero_and_the_next_request_is_served(
    router: RouterFactory, record_property: Callable[[str, Any], None]
) -> None:
    handle = router(
        scaled_config(
            {
                "min_instances": 0,
                "max_instances": 2,
                "polling_interval": 0.5,
                "scale_down_delay_s": 1.0,
            }
        )
    )
    wait_scaling(
        handle, lambda s: s["current"] == 0 and not replicas(handle), WAIT, "idle at zero replicas"
    )

    started = time.monotonic()
    response = httpx.post(f"{handle.url}{SCORE_URL}", json={"x": 1}, timeout=60.0)
    cold_start = time.monotonic() - started

    record_property("cold_start_s", round(cold_start, 3))
    measured = f"cold start (request at zero replicas -> answer) took {cold_start:.2f} s"
    print(measured)
    assert response.status_code == 200, f"{measured}: {response.status_code} {response.text}"
    assert response.json()["replica"].startswith("r")
    decisions = scaling(handle)["decisions"]
    assert any(d["from"] == 0 and d["to"] >= 1 for d in decisions), decisions


# -- draining --------------------------------------------------------------------------------


def test_scale_down_lets_requests_in_flight_finish(
    router: RouterFactory, loads: list[Load]
) -> None:
    # Four replicas taking 4 requests each; four clients keep one long request on each. Demand
    # is 4 / 4 = 1 replica's worth, which needs 2: two replicas are stopped while busy.
    handle = router(
        scaled_config(
            {
                "min_instances": 1,
                "max_instances": 4,
                "polling_interval": 0.5,
                "scale_down_delay_s": 3.0,
            },
            request_settings={"max_concurrent_requests_per_instance": 4},
            instance_count=4,
        )
    )
    wait_scaling(handle, lambda s: s["ready"] == 4, WAIT, "4 replicas ready")
    before = {answer_name(r) for r in replicas(handle)}

    load = start_load(loads, handle, clients=4, query="delay_ms=1500")
    wait_scaling(handle, lambda s: s["current"] == 2, WAIT, "scaled down to 2 under load")
    scaled_down = time.monotonic()
    wait_until(
        lambda: len(replicas(handle)) == 2,
        timeout=WAIT,
        interval=POLL,
        message="the 2 surplus replicas drained and stopped",
    )
    remaining = {answer_name(r) for r in replicas(handle)}
    load.stop()

    removed = before - remaining
    assert len(removed) == 2
    finished_on_removed = [
        o for o in load.outcomes if o.replica in removed and o.started < scaled_down < o.ended
    ]
    assert finished_on_removed, "no request was in flight on a replica while it was drained"
    assert_no_failures(load)
    assert not any("drain timed out" in line for line in handle.stderr)


# -- probes ----------------------------------------------------------------------------------


def replica_url(handle: RouterHandle, endpoint: str, deployment: str, index: int = 0) -> str:
    return "http://" + handle.deployment(endpoint, deployment)["replicas"][index]["address"]


def set_health(url: str, status: int) -> None:
    httpx.post(f"{url}/control/health", params={"status": status}, timeout=10.0).raise_for_status()


def health_checks(url: str) -> int:
    return httpx.get(f"{url}/stats", params={"history": "0"}, timeout=10.0).json()["health_checks"]


def states(handle: RouterHandle, endpoint: str, deployment: str) -> dict[str, str]:
    return {r["name"]: r["state"] for r in handle.deployment(endpoint, deployment)["replicas"]}


def probe_config() -> dict[str, Any]:
    """Two endpoints: `ready` probes readiness on `/` (liveness elsewhere), `live` the other way
    round, both with Azure's probe fields and small periods and thresholds."""
    elsewhere = {
        "path": "/stats?history=0",
        "initial_delay": 0,
        "period": 0.2,
        "timeout": 2,
        "success_threshold": 1,
        "failure_threshold": 3,
    }
    on_health = {
        "path": "/",
        "initial_delay": 0,
        "period": 0.2,
        "timeout": 2,
        "success_threshold": 1,
        "failure_threshold": 3,
    }
    config = endpoint_config(
        name="ready",
        deployment="blue",
        command=MODEL_SERVER,
        cwd=str(REPO_ROOT),
        instance_count=2,
        server={"access_log": False},
        readiness_probe=on_health,
        liveness_probe=elsewhere,
    )
    live = endpoint_config(
        name="live",
        deployment="blue",
        command=MODEL_SERVER,
        cwd=str(REPO_ROOT),
        instance_count=1,
        readiness_probe=elsewhere,
        liveness_probe=on_health,
    )
    config["endpoints"] += live["endpoints"]
    return config


def test_failing_readiness_takes_a_replica_out_without_restarting_it(
    router: RouterFactory,
) -> None:
    handle = router(probe_config())
    wait_until(
        lambda: list(states(handle, "ready", "blue").values()) == ["ready", "ready"],
        timeout=WAIT,
        interval=POLL,
        message="both replicas ready",
    )
    before = handle.deployment("ready", "blue")["replicas"]
    sick = before[0]
    sick_url = "http://" + sick["address"]

    set_health(sick_url, 503)
    # (The admin API shows it as "starting" rather than "unready": see the xfail test below.)
    wait_until(
        lambda: states(handle, "ready", "blue")[sick["name"]] != "ready",
        timeout=WAIT,
        interval=POLL,
        message="the replica leaves routing",
    )
    # Keep failing for 3x the threshold: a restart, if any, would have happened by then.
    seen = health_checks(sick_url)
    wait_until(
        lambda: health_checks(sick_url) >= seen + 9,
        timeout=WAIT,
        interval=POLL,
        message="9 more failing readiness probes",
    )

    with httpx.Client(timeout=10.0) as client:
        answers = [
            client.post(f"{handle.url}/api/v1/endpoint/ready/score", json={}) for _ in range(10)
        ]
    healthy_name = answer_name(before[1])
    assert [(a.status_code, a.json()["replica"]) for a in answers] == [(200, healthy_name)] * 10
    after = handle.deployment("ready", "blue")["replicas"]
    assert [(r["name"], r["address"]) for r in after] == [
        (r["name"], r["address"]) for r in before
    ]  # same processes, no replacement
    assert not any("restarting" in line for line in handle.stderr)

    set_health(sick_url, 200)
    wait_until(
        lambda: states(handle, "ready", "blue")[sick["name"]] == "ready",
        timeout=WAIT,
        interval=POLL,
        message="the replica returns to routing",
    )


def test_admin_shows_a_replica_failing_readiness_as_unready(router: RouterFactory) -> None:
    handle = router(probe_config())
    wait_until(
        lambda: list(states(handle, "ready", "blue").values()) == ["ready", "ready"],
        timeout=WAIT,
        interval=POLL,
        message="both replicas ready",
    )
    [sick, _] = handle.deployment("ready", "blue")["replicas"]

    set_health("http://" + sick["address"], 503)
    state = wait_until(
        lambda: (
            states(handle, "ready", "blue")[sick["name"]] != "ready"
            and states(handle, "ready", "blue")[sick["name"]]
        ),
        timeout=WAIT,
        interval=POLL,
        message="the replica leaves routing",
    )
    assert state == "unready"


def test_failing_liveness_restarts_the_replica(router: RouterFactory) -> None:
    handle = router(probe_config())
    wait_until(
        lambda: list(states(handle, "live", "blue").values()) == ["ready"],
        timeout=WAIT,
        interval=POLL,
        message="the replica is ready",
    )
    [old] = handle.deployment("live", "blue")["replicas"]

    set_health("http://" + old["address"], 503)
    wait_until(
        lambda: (
            old["name"] not in states(handle, "live", "blue")
            and list(states(handle, "live", "blue").values()) == ["ready"]
        ),
        timeout=WAIT,
        interval=POLL,
        message="a replacement replica is ready",
    )

    [new] = handle.deployment("live", "blue")["replicas"]
    assert new["address"] != old["address"]
    assert any(
        "liveness probe failed 3 times in a row: restarting" in line and old["name"] in line
        for line in handle.stderr
    )
    answer = httpx.post(f"{handle.url}/api/v1/endpoint/live/score", json={}, timeout=10.0)
    assert answer.status_code == 200
    assert answer.json()["replica"] == answer_name(new)


# -- replica output ----------------------------------------------------------------------------

# A replica that writes one line to stdout and one to stderr, then runs the model server.
CHATTY_REPLICA = [
    "python",
    "-c",
    "import runpy, sys; "
    "print('hello from stdout on {port}'); "
    "print('hello from stderr on {port}', file=sys.stderr); "
    "sys.argv = ['model_server', *sys.argv[1:]]; "
    "runpy.run_module('tests.servers.model_server', run_name='__main__')",
    "--port",
    "{port}",
]


def test_replica_output_is_logged_tagged_with_deployment_and_replica(
    router: RouterFactory,
) -> None:
    handle = router(scaled_config({"min_instances": 1, "max_instances": 1}, command=CHATTY_REPLICA))
    wait_scaling(handle, lambda s: s["ready"] == 1, WAIT, "the replica is ready")
    [replica] = replicas(handle)
    port = replica["address"].rsplit(":", 1)[1]
    tag = re.escape(f"[{ENDPOINT}-{DEPLOYMENT}/{replica['name']}]")

    for stream in ("stdout", "stderr"):
        pattern = re.compile(
            rf"inferfront\.replica\.{ENDPOINT}\.{DEPLOYMENT}: {tag} "
            rf"hello from {stream} on {port}$"
        )
        wait_until(
            lambda p=pattern: any(p.search(line) for line in handle.stderr),
            timeout=WAIT,
            interval=POLL,
            message=f"the replica's {stream} line is logged",
        )
    assert any(re.search(rf"{tag} READY {port}$", line) for line in handle.stderr)
