"""Typed, validated configuration: server settings, endpoints and their deployments.

Names and defaults follow Azure ML's online endpoint / Kubernetes online deployment YAML. Models
are frozen and reject unknown settings. Cross-field rules raise `RuleViolations` so the loader can
report each problem at its own path. Endpoint keys are `SecretStr`: never shown in repr/str.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    model_validator,
)

from inferfront.config.errors import Location, RuleViolations

PORT_PLACEHOLDER = "{port}"
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
_NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9-]{2,31}")
_ENV_NAME_PATTERN = re.compile(r"[^=\x00]+")
_UNPRINTABLE_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")


def _check_name(value: str) -> str:
    if not _NAME_PATTERN.fullmatch(value):
        raise ValueError(
            f"'{value}' is not a valid name: use 3-32 characters, start with a letter, "
            "then only letters, digits or hyphens"
        )
    return value


def _check_route(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"'{value}' must start with '/' (for example '/{value}')")
    if _UNPRINTABLE_OR_SPACE.search(value):
        raise ValueError(f"'{value}' must not contain spaces or control characters")
    return value


def _check_secret(value: SecretStr) -> SecretStr:
    # Messages here must never include the value itself.
    secret = value.get_secret_value()
    if not secret:
        raise ValueError("the key is empty")
    if _UNPRINTABLE_OR_SPACE.search(secret):
        raise ValueError(
            "the key contains spaces or control characters; it is sent in an Authorization "
            "header, so it must be a single printable token"
        )
    return value


def _check_env_name(value: str) -> str:
    if not _ENV_NAME_PATTERN.fullmatch(value):
        raise ValueError(f"'{value}' is not a valid environment variable name")
    return value


def _env_value_to_str(value: object) -> object:
    # YAML turns `WORKERS: 4` into an int; an environment only holds strings, so convert numbers.
    # Booleans are refused: YAML's true/yes/on would silently become "True".
    if isinstance(value, bool):
        raise ValueError(f'must be a string; quote it, e.g. "{str(value).lower()}"')
    if isinstance(value, int | float):
        return str(value)
    return value


def parse_replica_url(url: str) -> tuple[str, int]:
    """`http://HOST:PORT` -> (host, port); ValueError explains what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(
            f"'{url}' must start with http:// (only plain HTTP replicas are supported)"
        )
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"'{url}' has an invalid port; use a number from 1 to 65535") from None
    if not parts.hostname or port is None:
        raise ValueError(f"'{url}' needs a host and a port, e.g. http://127.0.0.1:5001")
    if port == 0:
        raise ValueError(f"'{url}' has port 0; use the port the replica listens on")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(
            f"'{url}' must be just http://HOST:PORT; set the path with scoring_route instead"
        )
    return parts.hostname, port


def _check_replica_url(url: str) -> str:
    parse_replica_url(url)
    return url


def _reject_unsupported_auth_mode(value: object) -> object:
    if value == "aml_token":
        raise ValueError("auth_mode 'aml_token' is not supported yet; use 'key' or 'none'")
    return value


# Strict numbers: YAML already types its scalars, so "5000" (a quoted string) or `true` given for a
# number is a mistake worth reporting rather than coercing. Strict floats still accept ints.
NonNegativeInt = Annotated[int, Field(strict=True, ge=0)]
PositiveInt = Annotated[int, Field(strict=True, ge=1)]
NonNegativeFloat = Annotated[float, Field(strict=True, ge=0)]
PositiveFloat = Annotated[float, Field(strict=True, gt=0)]
Port = Annotated[int, Field(strict=True, ge=0, le=65535)]
Host = Annotated[str, Field(min_length=1)]
Name = Annotated[str, AfterValidator(_check_name)]
RoutePath = Annotated[str, AfterValidator(_check_route)]
Secret = Annotated[SecretStr, AfterValidator(_check_secret)]
TrafficPercent = Annotated[int, Field(strict=True, ge=0, le=100)]
MirrorPercent = Annotated[int, Field(strict=True, ge=1, le=50)]
ReplicaUrl = Annotated[str, AfterValidator(_check_replica_url)]
EnvName = Annotated[str, AfterValidator(_check_env_name)]
EnvValue = Annotated[str, BeforeValidator(_env_value_to_str)]
AuthMode = Annotated[Literal["key", "none"], BeforeValidator(_reject_unsupported_auth_mode)]


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _raise_if_any(violations: list[tuple[Location, str]]) -> None:
    if violations:
        raise RuleViolations(violations)


class Limits(_Settings):
    """HTTP parsing limits: of clients' requests, and (`max_header_bytes`) of replicas' answers
    too, whose header section and chunk framing are held to the same bound."""

    max_request_line_bytes: PositiveInt = 8192
    max_header_bytes: PositiveInt = 65536
    max_headers: PositiveInt = 100
    max_body_bytes: NonNegativeInt = 1 << 30
    replay_buffer_bytes: NonNegativeInt = 65536


class ServerSettings(_Settings):
    """Listeners and process-wide behaviour. Port 0 asks the OS for a free port (handy in tests)."""

    host: Host = "127.0.0.1"
    port: Port = 8080
    admin_host: Host = "127.0.0.1"
    admin_port: Port = 9090
    access_log: bool = Field(default=True, strict=True)
    retries: NonNegativeInt = 2
    drain_timeout_s: NonNegativeFloat = 30.0
    limits: Limits = Field(default_factory=Limits)

    @model_validator(mode="after")
    def _listeners_do_not_collide(self) -> ServerSettings:
        hosts_overlap = (
            self.host == self.admin_host
            or self.host in WILDCARD_HOSTS
            or self.admin_host in WILDCARD_HOSTS
        )
        if self.port != 0 and self.port == self.admin_port and hosts_overlap:
            raise RuleViolations(
                [(("admin_port",), f"must differ from port ({self.port}); both cannot listen")]
            )
        return self


class RequestSettings(_Settings):
    """Per-request limits; use `Deployment.effective_max_queued_requests` for the queue bound."""

    request_timeout_ms: PositiveInt = 5000
    max_concurrent_requests_per_instance: PositiveInt = 1
    max_queue_wait_ms: NonNegativeInt = 500
    max_queued_requests: NonNegativeInt | None = None


class Probe(_Settings):
    """HTTP health probe; numbers are seconds."""

    path: RoutePath = "/"
    initial_delay: NonNegativeFloat = 10.0
    # A zero period would probe in a busy loop and a zero timeout would always fail.
    period: PositiveFloat = 10.0
    timeout: PositiveFloat = 2.0
    success_threshold: PositiveInt = 1
    failure_threshold: PositiveInt = 30


class ScaleSettings(_Settings):
    """`default`: a fixed `instance_count`; `target_utilization`: autoscale between the bounds."""

    type: Literal["default", "target_utilization"] = "default"
    min_instances: NonNegativeInt = 1
    max_instances: PositiveInt = 1
    target_utilization_percentage: Annotated[int, Field(strict=True, ge=1, le=100)] = 70
    polling_interval: PositiveFloat = 1.0
    scale_down_delay_s: NonNegativeFloat = 60.0

    @model_validator(mode="after")
    def _bounds_are_ordered(self) -> ScaleSettings:
        if self.max_instances < self.min_instances:
            raise RuleViolations(
                [
                    (
                        ("max_instances",),
                        f"must be at least min_instances ({self.min_instances}); "
                        f"got {self.max_instances}",
                    )
                ]
            )
        return self


class Deployment(_Settings):
    """One model version behind an endpoint: replicas that already run (`urls`) or that the
    router starts (`command`)."""

    name: Name
    urls: Annotated[tuple[ReplicaUrl, ...], Field(min_length=1)] | None = None
    command: Annotated[tuple[str, ...], Field(min_length=1)] | None = None
    env: dict[EnvName, EnvValue] = Field(default_factory=dict)
    cwd: Path | None = None
    scoring_route: RoutePath = "/score"
    instance_count: NonNegativeInt = 1
    request_settings: RequestSettings = Field(default_factory=RequestSettings)
    liveness_probe: Probe = Field(default_factory=Probe)
    readiness_probe: Probe = Field(default_factory=Probe)
    scale_settings: ScaleSettings = Field(default_factory=ScaleSettings)

    @model_validator(mode="after")
    def _replica_source_is_consistent(self) -> Deployment:
        _raise_if_any(self._violations())
        return self

    def _violations(self) -> list[tuple[Location, str]]:
        if (self.urls is None) == (self.command is None):
            both_or_neither = "both are set" if self.urls is not None else "neither is set"
            return [
                (
                    (),
                    f"set exactly one of 'urls' (replicas that already run) or 'command' "
                    f"(replicas the router starts); {both_or_neither}",
                )
            ]
        if self.urls is not None:
            return self._url_violations(self.urls)
        return self._command_violations(self.command or ())

    def _url_violations(self, urls: tuple[str, ...]) -> list[tuple[Location, str]]:
        violations: list[tuple[Location, str]] = []
        seen: set[tuple[str, int]] = set()
        for index, url in enumerate(urls):
            address = parse_replica_url(url)
            if address in seen:
                violations.append((("urls", index), f"'{url}' is listed twice"))
            seen.add(address)
        if self.scale_settings.type == "target_utilization":
            violations.append(
                (
                    ("scale_settings", "type"),
                    "target_utilization needs 'command' replicas: the router can only scale "
                    "replicas it starts itself; use type: default with 'urls'",
                )
            )
        for field in ("env", "cwd"):
            if getattr(self, field):
                violations.append(
                    ((field,), f"'{field}' applies only to 'command' replicas; remove it")
                )
        return violations

    def _command_violations(self, command: tuple[str, ...]) -> list[tuple[Location, str]]:
        if any(PORT_PLACEHOLDER in argument for argument in command):
            return []
        return [
            (
                ("command",),
                f"no argument contains '{PORT_PLACEHOLDER}'; the router picks each replica's port "
                f'and passes it there, e.g. ["python", "serve.py", "--port", '
                f'"{PORT_PLACEHOLDER}"]',
            )
        ]

    @property
    def autoscaled(self) -> bool:
        return self.scale_settings.type == "target_utilization"

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        """(host, port) of each url replica; empty for command replicas."""
        return tuple(parse_replica_url(url) for url in self.urls or ())

    @property
    def initial_replicas(self) -> int:
        if self.urls is not None:
            return len(self.urls)
        if self.autoscaled:
            scale = self.scale_settings
            return min(max(self.instance_count, scale.min_instances), scale.max_instances)
        return self.instance_count

    @property
    def effective_max_queued_requests(self) -> int:
        """Requests allowed to wait in the router's queue before 429 (Azure's 2x rule if unset)."""
        settings = self.request_settings
        if settings.max_queued_requests is not None:
            return settings.max_queued_requests
        if self.urls is not None:
            replicas = len(self.urls)
        else:
            replicas = max(self.instance_count, self.scale_settings.max_instances)
        return 2 * settings.max_concurrent_requests_per_instance * max(replicas, 1)

    def command_for_port(self, port: int) -> list[str]:
        """The argv for one replica: every `{port}` replaced (plain replace, so other braces in
        arguments are left alone)."""
        if self.command is None:
            raise ValueError(f"deployment '{self.name}' has urls, not a command")
        return [argument.replace(PORT_PLACEHOLDER, str(port)) for argument in self.command]


class EndpointKeys(_Settings):
    """Either key is accepted as `Authorization: Bearer <key>`."""

    primary: Secret
    secondary: Secret | None = None


class Endpoint(_Settings):
    """A scoring endpoint: authentication, traffic split, mirror, and its deployments."""

    name: Name
    auth_mode: AuthMode = "key"
    keys: EndpointKeys | None = None
    traffic: dict[str, TrafficPercent] = Field(default_factory=dict)
    mirror_traffic: dict[str, MirrorPercent] = Field(default_factory=dict)
    deployments: Annotated[tuple[Deployment, ...], Field(min_length=1)]

    @model_validator(mode="after")
    def _references_are_valid(self) -> Endpoint:
        _raise_if_any(
            self._auth_violations()
            + self._duplicate_deployment_violations()
            + self._traffic_violations()
            + self._mirror_violations()
        )
        return self

    def _auth_violations(self) -> list[tuple[Location, str]]:
        if self.auth_mode == "key" and self.keys is None:
            return [
                (
                    ("keys",),
                    "auth_mode 'key' needs keys: set keys.primary (and optionally "
                    "keys.secondary), or set auth_mode: none",
                )
            ]
        if self.auth_mode == "none" and self.keys is not None:
            return [
                (
                    ("keys",),
                    "keys are set but auth_mode is 'none', so they would be ignored; remove "
                    "them or set auth_mode: key",
                )
            ]
        return []

    def _duplicate_deployment_violations(self) -> list[tuple[Location, str]]:
        violations: list[tuple[Location, str]] = []
        seen: set[str] = set()
        for index, deployment in enumerate(self.deployments):
            if deployment.name in seen:
                violations.append(
                    (
                        ("deployments", index, "name"),
                        f"deployment name '{deployment.name}' is used twice in this endpoint",
                    )
                )
            seen.add(deployment.name)
        return violations

    def _traffic_violations(self) -> list[tuple[Location, str]]:
        violations = self._unknown_deployment_violations("traffic", self.traffic)
        total = sum(self.traffic.values())
        if total not in (0, 100):
            violations.append(
                (
                    ("traffic",),
                    f"percentages add up to {total}; they must add up to 100 (or all be 0)",
                )
            )
        return violations

    def _mirror_violations(self) -> list[tuple[Location, str]]:
        if len(self.mirror_traffic) > 1:
            names = ", ".join(self.mirror_traffic)
            return [
                (
                    ("mirror_traffic",),
                    f"mirror to at most one deployment; {len(self.mirror_traffic)} are listed "
                    f"({names})",
                )
            ]
        return self._unknown_deployment_violations("mirror_traffic", self.mirror_traffic)

    def _unknown_deployment_violations(
        self, field: str, percentages: dict[str, int]
    ) -> list[tuple[Location, str]]:
        known = self.deployment_names
        return [
            (
                (field, name),
                f"'{name}' is not a deployment of this endpoint (deployments: {', '.join(known)})",
            )
            for name in percentages
            if name not in known
        ]

    @property
    def deployment_names(self) -> tuple[str, ...]:
        return tuple(deployment.name for deployment in self.deployments)

    def deployment(self, name: str) -> Deployment | None:
        """The deployment called `name`, or None."""
        return next((d for d in self.deployments if d.name == name), None)

    @property
    def mirror(self) -> tuple[str, int] | None:
        """(deployment, percent) receiving a copy of live traffic, or None."""
        return next(iter(self.mirror_traffic.items()), None)

    @property
    def primary_key(self) -> str | None:
        return self.keys.primary.get_secret_value() if self.keys else None

    @property
    def secondary_key(self) -> str | None:
        if self.keys is None or self.keys.secondary is None:
            return None
        return self.keys.secondary.get_secret_value()

    @property
    def accepted_keys(self) -> tuple[str, ...]:
        """Every key a request may present; empty when auth_mode is 'none'."""
        return tuple(key for key in (self.primary_key, self.secondary_key) if key)


class Config(_Settings):
    """The whole configuration. `source` and `base_dir` are set by the loader, not the file."""

    server: ServerSettings = Field(default_factory=ServerSettings)
    endpoints: Annotated[tuple[Endpoint, ...], Field(min_length=1)]
    source: Path | None = None
    base_dir: Path = Field(default_factory=Path.cwd)

    @model_validator(mode="after")
    def _endpoint_names_are_unique(self) -> Config:
        violations: list[tuple[Location, str]] = []
        seen: set[str] = set()
        for index, endpoint in enumerate(self.endpoints):
            if endpoint.name in seen:
                violations.append(
                    (
                        ("endpoints", index, "name"),
                        f"endpoint name '{endpoint.name}' is used twice",
                    )
                )
            seen.add(endpoint.name)
        _raise_if_any(violations)
        return self

    def endpoint(self, name: str) -> Endpoint | None:
        """The endpoint called `name`, or None."""
        return next((e for e in self.endpoints if e.name == name), None)


# Settings a configuration file may contain at its top level (`source`/`base_dir` come from where
# the file is, not from its contents).
FILE_TOP_LEVEL_SETTINGS = ("server", "endpoints")
