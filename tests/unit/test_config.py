"""The configuration layer: YAML -> validated models, or every problem as FILE: PATH: MESSAGE."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from inferfront.config import (
    Config,
    ConfigError,
    Deployment,
    Endpoint,
    Limits,
    Probe,
    RequestSettings,
    ScaleSettings,
    ServerSettings,
    load_config,
    summarize,
)
from tests.helpers import REPO_ROOT

EXAMPLES = REPO_ROOT / "examples" / "configs"
DROP = object()  # an override value that removes the key


def _with(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = {**base, **overrides}
    return {key: value for key, value in merged.items() if value is not DROP}


def deployment(**overrides: Any) -> dict[str, Any]:
    return _with({"name": "blue", "urls": ["http://127.0.0.1:5001"]}, overrides)


def command_deployment(**overrides: Any) -> dict[str, Any]:
    base = {"name": "green", "command": ["python", "serve.py", "--port", "{port}"]}
    return _with(base, overrides)


def with_urls(**overrides: Any) -> dict[str, Any]:
    """A document with one endpoint whose one deployment has urls (plus `overrides`)."""
    return document(endpoint(deployments=[deployment(**overrides)]))


def with_command(**overrides: Any) -> dict[str, Any]:
    """A document with one endpoint whose one deployment has a command (plus `overrides`)."""
    return document(endpoint(deployments=[command_deployment(**overrides)]))


def autoscale(min_instances: int, max_instances: int) -> dict[str, Any]:
    return {
        "type": "target_utilization",
        "min_instances": min_instances,
        "max_instances": max_instances,
    }


def endpoint(**overrides: Any) -> dict[str, Any]:
    base = {"name": "my-endpoint", "auth_mode": "none", "deployments": [deployment()]}
    return _with(base, overrides)


def document(*endpoints: dict[str, Any], **top_level: Any) -> dict[str, Any]:
    return {**top_level, "endpoints": list(endpoints or [endpoint()])}


def write(tmp_path: Path, content: dict[str, Any] | str, name: str = "inferfront.yaml") -> Path:
    path = tmp_path / name
    text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
    path.write_text(textwrap.dedent(text) if isinstance(content, str) else text)
    return path


def problems(path: Path | str) -> list[str]:
    """The problems load_config reports, each checked for and stripped of its `FILE: ` prefix."""
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    error = raised.value
    assert str(error) == "\n".join(error.problems)
    prefix = f"{path}: "
    assert all(problem.startswith(prefix) for problem in error.problems), error.problems
    return [problem.removeprefix(prefix) for problem in error.problems]


def load(tmp_path: Path, content: dict[str, Any] | str) -> Config:
    return load_config(write(tmp_path, content))


# --- a good file ---------------------------------------------------------------------------------

FULL = """\
server:
  host: 0.0.0.0
  port: 8000
  admin_host: 127.0.0.1
  admin_port: 8001
  access_log: false
  retries: 3
  drain_timeout_s: 12.5
  limits:
    max_request_line_bytes: 4096
    max_header_bytes: 32768
    max_headers: 50
    max_body_bytes: 1048576
    replay_buffer_bytes: 0
endpoints:
  - name: my-endpoint
    auth_mode: key
    keys:
      primary: ${TEST_CONFIG_PRIMARY}
      secondary: file:secrets/key2
    traffic: {blue: 90, green: 10}
    mirror_traffic: {green: 10}
    deployments:
      - name: blue
        urls: ["http://127.0.0.1:5001", "http://localhost:5002/", "http://[::1]:5003"]
        scoring_route: /v1/score
        instance_count: 7
        request_settings:
          request_timeout_ms: 2500
          max_concurrent_requests_per_instance: 4
          max_queue_wait_ms: 0
          max_queued_requests: 17
        liveness_probe: {path: /live, initial_delay: 0, period: 0.5, timeout: 1,
                         success_threshold: 2, failure_threshold: 3}
        readiness_probe: {path: /ready, initial_delay: 1.5, period: 2, timeout: 0.25,
                          success_threshold: 1, failure_threshold: 4}
      - name: green
        command: ["python", "serve.py", "--port={port}"]
        env: {WORKERS: 4, MODE: fast, RATIO: 0.5}
        cwd: app
        instance_count: 9
        scale_settings:
          type: target_utilization
          min_instances: 2
          max_instances: 5
          target_utilization_percentage: 60
          polling_interval: 0.5
          scale_down_delay_s: 0
  - name: other-endpoint
    auth_mode: none
    deployments:
      - name: only
        command: [./run, "{port}"]
"""


@pytest.fixture
def full_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv("TEST_CONFIG_PRIMARY", "primary-secret")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "key2").write_text("\n  secondary-secret \n")
    (tmp_path / "app").mkdir()
    return load(tmp_path, FULL)


def test_full_file_loads_every_setting(full_config: Config, tmp_path: Path) -> None:
    config = full_config
    assert config.source == tmp_path / "inferfront.yaml"
    assert config.base_dir == tmp_path
    assert config.server == ServerSettings(
        host="0.0.0.0",
        port=8000,
        admin_host="127.0.0.1",
        admin_port=8001,
        access_log=False,
        retries=3,
        drain_timeout_s=12.5,
        limits=Limits(
            max_request_line_bytes=4096,
            max_header_bytes=32768,
            max_headers=50,
            max_body_bytes=1048576,
            replay_buffer_bytes=0,
        ),
    )
    endpoint_ = config.endpoints[0]
    assert endpoint_.name == "my-endpoint"
    assert endpoint_.auth_mode == "key"
    assert endpoint_.traffic == {"blue": 90, "green": 10}
    assert endpoint_.mirror == ("green", 10)
    assert endpoint_.deployment_names == ("blue", "green")


def test_full_file_url_deployment(full_config: Config) -> None:
    blue = full_config.endpoints[0].deployment("blue")
    assert blue is not None
    assert blue.urls == ("http://127.0.0.1:5001", "http://localhost:5002/", "http://[::1]:5003")
    assert blue.addresses == (("127.0.0.1", 5001), ("localhost", 5002), ("::1", 5003))
    assert blue.command is None
    assert blue.cwd is None
    assert blue.scoring_route == "/v1/score"
    assert blue.initial_replicas == 3  # the urls, not instance_count
    assert blue.request_settings == RequestSettings(
        request_timeout_ms=2500,
        max_concurrent_requests_per_instance=4,
        max_queue_wait_ms=0,
        max_queued_requests=17,
    )
    assert blue.effective_max_queued_requests == 17
    assert blue.liveness_probe == Probe(
        path="/live",
        initial_delay=0,
        period=0.5,
        timeout=1,
        success_threshold=2,
        failure_threshold=3,
    )
    assert blue.readiness_probe.timeout == 0.25


def test_full_file_command_deployment(full_config: Config, tmp_path: Path) -> None:
    green = full_config.endpoints[0].deployment("green")
    assert green is not None
    assert green.command == ("python", "serve.py", "--port={port}")
    assert green.command_for_port(5123) == ["python", "serve.py", "--port=5123"]
    assert green.env == {"WORKERS": "4", "MODE": "fast", "RATIO": "0.5"}
    assert green.cwd == tmp_path / "app"
    assert green.addresses == ()
    assert green.autoscaled
    assert green.scale_settings == ScaleSettings(
        type="target_utilization",
        min_instances=2,
        max_instances=5,
        target_utilization_percentage=60,
        polling_interval=0.5,
        scale_down_delay_s=0,
    )
    assert green.initial_replicas == 5  # instance_count 9 clamped into 2..5
    assert green.effective_max_queued_requests == 2 * 1 * 9


def test_command_cwd_defaults_to_the_config_folder(full_config: Config, tmp_path: Path) -> None:
    only = full_config.endpoints[1].deployments[0]
    assert only.cwd == tmp_path
    assert only.cwd.is_absolute()


def test_lookup_helpers(full_config: Config) -> None:
    assert full_config.endpoint("other-endpoint") is full_config.endpoints[1]
    assert full_config.endpoint("missing") is None
    assert full_config.endpoints[0].deployment("nope") is None


def test_models_are_frozen(full_config: Config) -> None:
    with pytest.raises(ValidationError):
        full_config.server.port = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        full_config.endpoints[0].deployments[0].name = "x"  # type: ignore[misc]


# --- defaults ------------------------------------------------------------------------------------


def test_defaults(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        {"endpoints": [{"name": "abc", "auth_mode": "none", "deployments": [deployment()]}]},
    )
    server = config.server
    assert (server.host, server.port, server.admin_host, server.admin_port) == (
        "127.0.0.1",
        8080,
        "127.0.0.1",
        9090,
    )
    assert (server.access_log, server.retries, server.drain_timeout_s) == (True, 2, 30)
    assert server.limits == Limits(
        max_request_line_bytes=8192,
        max_header_bytes=65536,
        max_headers=100,
        max_body_bytes=1 << 30,
        replay_buffer_bytes=65536,
    )
    endpoint_ = config.endpoints[0]
    assert endpoint_.traffic == {}
    assert endpoint_.mirror_traffic == {}
    assert endpoint_.mirror is None
    assert endpoint_.accepted_keys == ()
    blue = endpoint_.deployments[0]
    assert blue.scoring_route == "/score"
    assert blue.instance_count == 1
    assert blue.env == {}
    assert blue.request_settings == RequestSettings(
        request_timeout_ms=5000,
        max_concurrent_requests_per_instance=1,
        max_queue_wait_ms=500,
        max_queued_requests=None,
    )
    expected_probe = Probe(
        path="/", initial_delay=10, period=10, timeout=2, success_threshold=1, failure_threshold=30
    )
    assert blue.liveness_probe == expected_probe
    assert blue.readiness_probe == expected_probe
    assert blue.scale_settings == ScaleSettings(
        type="default",
        min_instances=1,
        max_instances=1,
        target_utilization_percentage=70,
        polling_interval=1,
        scale_down_delay_s=60,
    )
    assert not blue.autoscaled


def test_auth_mode_defaults_to_key(tmp_path: Path) -> None:
    config = load(tmp_path, document(endpoint(auth_mode=DROP, keys={"primary": "k1"})))
    endpoint_ = config.endpoints[0]
    assert endpoint_.auth_mode == "key"
    assert (endpoint_.primary_key, endpoint_.secondary_key) == ("k1", None)
    assert endpoint_.accepted_keys == ("k1",)


def test_top_level_extension_keys_hold_anchors(tmp_path: Path) -> None:
    text = """\
    x-settings: &settings {request_timeout_ms: 1234}
    endpoints:
      - name: abc
        auth_mode: none
        deployments:
          - {name: one, urls: ["http://127.0.0.1:5001"], request_settings: *settings}
          - name: two
            urls: ["http://127.0.0.1:5002"]
            request_settings: {<<: *settings, max_queue_wait_ms: 7}
    """
    deployments = load(tmp_path, text).endpoints[0].deployments
    assert [d.request_settings.request_timeout_ms for d in deployments] == [1234, 1234]
    assert deployments[1].request_settings.max_queue_wait_ms == 7


# --- derived values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        pytest.param({}, 2, id="all-defaults"),
        pytest.param({"instance_count": 3}, 6, id="instance-count"),
        pytest.param({"instance_count": 0}, 2, id="zero-instances-counts-as-one"),
        pytest.param(
            {"instance_count": 2, "request_settings": {"max_concurrent_requests_per_instance": 3}},
            12,
            id="times-concurrency",
        ),
        pytest.param(
            {"instance_count": 1, "scale_settings": autoscale(1, 4)},
            8,
            id="autoscale-max",
        ),
        pytest.param(
            {"instance_count": 6, "scale_settings": autoscale(1, 4)},
            12,
            id="instance-count-above-max",
        ),
        pytest.param({"request_settings": {"max_queued_requests": 0}}, 0, id="explicit-zero"),
        pytest.param({"request_settings": {"max_queued_requests": 99}}, 99, id="explicit"),
    ],
)
def test_effective_max_queued_requests_for_command_replicas(
    tmp_path: Path, settings: dict[str, Any], expected: int
) -> None:
    config = load(tmp_path, with_command(**settings))
    deployment_ = config.endpoints[0].deployments[0]
    assert deployment_.effective_max_queued_requests == expected


def test_effective_max_queued_requests_for_url_replicas_counts_the_urls(tmp_path: Path) -> None:
    urls = ["http://127.0.0.1:5001", "http://127.0.0.1:5002", "http://127.0.0.1:5003"]
    settings = {"urls": urls, "request_settings": {"max_concurrent_requests_per_instance": 2}}
    config = load(tmp_path, with_urls(**settings))
    assert config.endpoints[0].deployments[0].effective_max_queued_requests == 2 * 2 * 3


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        pytest.param({"instance_count": 3}, 3, id="default-uses-instance-count"),
        pytest.param({"instance_count": 0}, 0, id="default-zero"),
        pytest.param(
            {"instance_count": 0, "scale_settings": autoscale(2, 4)},
            2,
            id="clamped-up-to-min",
        ),
        pytest.param(
            {"instance_count": 3, "scale_settings": autoscale(2, 4)},
            3,
            id="within-bounds",
        ),
        pytest.param(
            {"instance_count": 10, "scale_settings": autoscale(2, 4)},
            4,
            id="clamped-down-to-max",
        ),
        pytest.param(
            {"instance_count": 0, "scale_settings": autoscale(0, 4)},
            0,
            id="scale-from-zero",
        ),
    ],
)
def test_initial_replicas(tmp_path: Path, settings: dict[str, Any], expected: int) -> None:
    config = load(tmp_path, with_command(**settings))
    assert config.endpoints[0].deployments[0].initial_replicas == expected


def test_url_replicas_ignore_instance_count(tmp_path: Path) -> None:
    urls = ["http://127.0.0.1:5001", "http://127.0.0.1:5002"]
    config = load(tmp_path, with_urls(urls=urls, instance_count=5))
    assert config.endpoints[0].deployments[0].initial_replicas == 2


def test_command_for_port_only_replaces_the_placeholder(tmp_path: Path) -> None:
    command = ["sh", "-c", "exec serve --port {port} --json '{\"a\": 1}'"]
    config = load(tmp_path, with_command(command=command))
    assert config.endpoints[0].deployments[0].command_for_port(7001) == [
        "sh",
        "-c",
        "exec serve --port 7001 --json '{\"a\": 1}'",
    ]


# --- secrets -------------------------------------------------------------------------------------


def keyed(keys: Any) -> dict[str, Any]:
    return document(endpoint(auth_mode="key", keys=keys))


def test_keys_from_environment_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_CONFIG_KEY", "from-env")
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "k").write_text("from-file\n")
    config = load(tmp_path, keyed({"primary": "${TEST_CONFIG_KEY}", "secondary": "file:nested/k"}))
    endpoint_ = config.endpoints[0]
    assert (endpoint_.primary_key, endpoint_.secondary_key) == ("from-env", "from-file")
    assert endpoint_.accepted_keys == ("from-env", "from-file")


def test_key_file_is_relative_to_the_config_folder_not_the_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir = tmp_path / "conf"
    config_dir.mkdir()
    (config_dir / "key").write_text("right")
    (tmp_path / "key").write_text("wrong")
    monkeypatch.chdir(tmp_path)
    path = write(config_dir, keyed({"primary": "file:key"}))
    assert load_config(path).endpoints[0].primary_key == "right"


def test_key_file_may_be_absolute(tmp_path: Path) -> None:
    key_file = tmp_path / "abs.key"
    key_file.write_text("absolute")
    config = load(tmp_path, keyed({"primary": f"file:{key_file}"}))
    assert config.endpoints[0].primary_key == "absolute"


def test_literal_keys_are_kept_as_written(tmp_path: Path) -> None:
    config = load(tmp_path, keyed({"primary": "abc$def", "secondary": "x${y"}))
    assert config.endpoints[0].accepted_keys == ("abc$def", "x${y")


def test_keys_never_appear_in_repr_str_dump_or_summary(full_config: Config, tmp_path: Path) -> None:
    endpoint_ = full_config.endpoints[0]
    assert endpoint_.accepted_keys == ("primary-secret", "secondary-secret")
    shown = [
        repr(full_config),
        str(full_config),
        repr(endpoint_),
        str(endpoint_.keys),
        str(full_config.model_dump()),
        full_config.model_dump_json(),
        summarize(full_config),
    ]
    for text in shown:
        assert "primary-secret" not in text
        assert "secondary-secret" not in text


@pytest.mark.parametrize(
    ("keys", "environment", "expected"),
    [
        pytest.param(
            {"primary": "${TEST_CONFIG_UNSET}"},
            {},
            "endpoints[0].keys.primary: environment variable 'TEST_CONFIG_UNSET' is not set",
            id="env-unset",
        ),
        pytest.param(
            {"primary": "${TEST_CONFIG_EMPTY}"},
            {"TEST_CONFIG_EMPTY": "  "},
            "endpoints[0].keys.primary: environment variable 'TEST_CONFIG_EMPTY' is empty",
            id="env-empty",
        ),
        pytest.param(
            {"primary": "ok", "secondary": "${BAD-NAME}"},
            {},
            "endpoints[0].keys.secondary: '${BAD-NAME}' is not a valid environment variable "
            "reference; use ${NAME} with letters, digits and underscores",
            id="env-bad-name",
        ),
        pytest.param(
            {"primary": "file:"},
            {},
            "endpoints[0].keys.primary: 'file:' needs a path, e.g. file:secrets/primary.key",
            id="file-no-path",
        ),
        pytest.param(
            {"primary": "k", "secondary": "k 2"},
            {},
            "endpoints[0].keys.secondary: the key contains spaces or control characters; it is "
            "sent in an Authorization header, so it must be a single printable token",
            id="key-with-space",
        ),
        pytest.param(
            {"primary": ""},
            {},
            "endpoints[0].keys.primary: the key is empty",
            id="literal-empty",
        ),
        pytest.param(
            {"secondary": "k"},
            {},
            "endpoints[0].keys.primary: required setting is missing: the primary key",
            id="primary-missing",
        ),
        pytest.param(
            {"primary": "k", "tertiary": "k"},
            {},
            "endpoints[0].keys.tertiary: unknown setting 'tertiary'; did you mean 'primary'?",
            id="unknown-key-name",
        ),
    ],
)
def test_key_problems(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    keys: dict[str, Any],
    environment: dict[str, str],
    expected: str,
) -> None:
    monkeypatch.delenv("TEST_CONFIG_UNSET", raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert problems(write(tmp_path, keyed(keys))) == [expected]


def test_missing_and_empty_key_files(tmp_path: Path) -> None:
    (tmp_path / "empty.key").write_text("\n \n")
    path = write(tmp_path, keyed({"primary": "file:absent.key", "secondary": "file:empty.key"}))
    assert problems(path) == [
        f"endpoints[0].keys.primary: cannot read key file '{tmp_path / 'absent.key'}': "
        "file not found",
        f"endpoints[0].keys.secondary: key file '{tmp_path / 'empty.key'}' is empty",
    ]


def test_unreadable_key_file(tmp_path: Path) -> None:
    (tmp_path / "a-directory").mkdir()
    path = write(tmp_path, keyed({"primary": "file:a-directory"}))
    assert problems(path) == [
        f"endpoints[0].keys.primary: cannot read key file '{tmp_path / 'a-directory'}': "
        "Is a directory"
    ]


def test_key_values_are_not_echoed_in_errors(tmp_path: Path) -> None:
    path = write(tmp_path, keyed({"primary": 987654321, "secondary": ["s3cr3t"]}))
    found = problems(path)
    assert found == [
        "endpoints[0].keys.primary: must be a string; put the value in quotes",
        "endpoints[0].keys.secondary: must be a string",
    ]
    assert not any("987654321" in line or "s3cr3t" in line for line in found)


# --- every kind of validation problem ------------------------------------------------------------

E0 = "endpoints[0]"
D0 = "endpoints[0].deployments[0]"

ERROR_CASES = [
    # unknown settings and suggestions
    pytest.param(
        with_urls(request_settings={"request_timout_ms": 9}),
        [
            f"{D0}.request_settings.request_timout_ms: unknown setting 'request_timout_ms'; "
            "did you mean 'request_timeout_ms'?"
        ],
        id="unknown-nested-with-suggestion",
    ),
    pytest.param(
        with_urls(replicas=3),
        [
            f"{D0}.replicas: unknown setting 'replicas'; valid settings here: name, urls, "
            "command, env, cwd, scoring_route, instance_count, request_settings, liveness_probe, "
            "readiness_probe, scale_settings"
        ],
        id="unknown-without-close-match-lists-valid",
    ),
    pytest.param(
        {"endpoint": [endpoint()]},
        [
            "endpoint: unknown setting 'endpoint'; did you mean 'endpoints'?",
            "endpoints: required setting is missing: list at least one endpoint",
        ],
        id="top-level-typo",
    ),
    pytest.param(
        document(source="elsewhere.yaml"),
        ["source: unknown setting 'source'; valid settings here: server, endpoints"],
        id="top-level-source-is-not-a-setting",
    ),
    pytest.param(
        document(server={"limits": {"max_body": 1}}),
        ["server.limits.max_body: unknown setting 'max_body'; did you mean 'max_body_bytes'?"],
        id="unknown-limit",
    ),
    pytest.param(
        with_urls(liveness_probe={"intial_delay": 1}),
        [
            f"{D0}.liveness_probe.intial_delay: unknown setting 'intial_delay'; "
            "did you mean 'initial_delay'?"
        ],
        id="unknown-probe-setting",
    ),
    # server
    pytest.param(
        document(server={"port": 70000, "admin_port": -1}),
        [
            "server.port: must be at most 65535 (got 70000)",
            "server.admin_port: must be at least 0 (got -1)",
        ],
        id="port-range",
    ),
    pytest.param(
        document(server={"port": 8000, "admin_port": 8000}),
        ["server.admin_port: must differ from port (8000); both cannot listen"],
        id="ports-collide",
    ),
    pytest.param(
        document(server={"host": "0.0.0.0", "admin_host": "127.0.0.1", "admin_port": 8080}),
        ["server.admin_port: must differ from port (8080); both cannot listen"],
        id="ports-collide-wildcard",
    ),
    pytest.param(
        document(server={"access_log": "maybe", "retries": -1, "drain_timeout_s": "soon"}),
        [
            "server.access_log: must be true or false (got 'maybe')",
            "server.retries: must be at least 0 (got -1)",
            "server.drain_timeout_s: must be a number (got 'soon')",
        ],
        id="server-types",
    ),
    pytest.param(
        document(server={"limits": {"max_headers": 0, "max_body_bytes": 1.5}}),
        [
            "server.limits.max_headers: must be at least 1 (got 0)",
            "server.limits.max_body_bytes: must be a whole number (got 1.5)",
        ],
        id="limits",
    ),
    pytest.param(
        document(server=[1, 2]),
        ["server: must be a mapping of settings (got a list)"],
        id="section-not-a-mapping",
    ),
    # endpoints
    pytest.param(
        {"endpoints": []},
        ["endpoints: must list at least one endpoint"],
        id="no-endpoints",
    ),
    pytest.param(
        document(endpoint(name="1st"), endpoint(name="ab"), endpoint(name="has_underscore")),
        [
            f"endpoints[{index}].name: '{name}' is not a valid name: use 3-32 characters, start "
            "with a letter, then only letters, digits or hyphens"
            for index, name in enumerate(["1st", "ab", "has_underscore"])
        ],
        id="endpoint-names",
    ),
    pytest.param(
        document(endpoint(name="x" * 33)),
        [
            f"{E0}.name: '{'x' * 33}' is not a valid name: use 3-32 characters, start with a "
            "letter, then only letters, digits or hyphens"
        ],
        id="name-too-long",
    ),
    pytest.param(
        document(endpoint(name=123)),
        [f"{E0}.name: must be a string (got 123); put the value in quotes"],
        id="name-not-a-string",
    ),
    pytest.param(
        document(endpoint(name=DROP)),
        [f"{E0}.name: required setting is missing"],
        id="name-missing",
    ),
    pytest.param(
        document(endpoint(), endpoint()),
        ["endpoints[1].name: endpoint name 'my-endpoint' is used twice"],
        id="duplicate-endpoints",
    ),
    pytest.param(
        document(endpoint(auth_mode="aml_token")),
        [f"{E0}.auth_mode: auth_mode 'aml_token' is not supported yet; use 'key' or 'none'"],
        id="aml-token-not-yet",
    ),
    pytest.param(
        document(endpoint(auth_mode="kee")),
        [f"{E0}.auth_mode: must be 'key' or 'none' (got 'kee'); did you mean 'key'?"],
        id="auth-mode-typo",
    ),
    pytest.param(
        document(endpoint(auth_mode="key")),
        [
            f"{E0}.keys: auth_mode 'key' needs keys: set keys.primary (and optionally "
            "keys.secondary), or set auth_mode: none"
        ],
        id="key-mode-needs-keys",
    ),
    pytest.param(
        document(endpoint(keys={"primary": "abc"})),
        [
            f"{E0}.keys: keys are set but auth_mode is 'none', so they would be ignored; remove "
            "them or set auth_mode: key"
        ],
        id="keys-with-auth-none",
    ),
    pytest.param(
        document(endpoint(deployments=[])),
        [f"{E0}.deployments: must list at least one deployment"],
        id="no-deployments",
    ),
    pytest.param(
        document(endpoint(deployments=DROP)),
        [f"{E0}.deployments: required setting is missing: list at least one deployment"],
        id="deployments-missing",
    ),
    pytest.param(
        document(endpoint(deployments=[deployment(), deployment(), deployment(name="red")])),
        [f"{E0}.deployments[1].name: deployment name 'blue' is used twice in this endpoint"],
        id="duplicate-deployments",
    ),
    # traffic and mirror
    pytest.param(
        document(endpoint(traffic={"blue": 90, "purple": 5})),
        [
            f"{E0}.traffic.purple: 'purple' is not a deployment of this endpoint "
            "(deployments: blue)",
            f"{E0}.traffic: percentages add up to 95; they must add up to 100 (or all be 0)",
        ],
        id="traffic-unknown-and-sum",
    ),
    pytest.param(
        document(endpoint(traffic={"blue": 101})),
        [f"{E0}.traffic.blue: must be at most 100 (got 101)"],
        id="traffic-over-100",
    ),
    pytest.param(
        document(endpoint(traffic={"blue": "50%"})),
        [f"{E0}.traffic.blue: must be a whole number (got '50%')"],
        id="traffic-not-a-number",
    ),
    pytest.param(
        document(endpoint(traffic=[{"blue": 100}])),
        [f"{E0}.traffic: must be a mapping of name: value pairs (got a list)"],
        id="traffic-not-a-mapping",
    ),
    pytest.param(
        document(
            endpoint(
                deployments=[deployment(), deployment(name="green")],
                mirror_traffic={"blue": 10, "green": 10},
            )
        ),
        [f"{E0}.mirror_traffic: mirror to at most one deployment; 2 are listed (blue, green)"],
        id="mirror-two",
    ),
    pytest.param(
        document(endpoint(mirror_traffic={"grene": 10})),
        [
            f"{E0}.mirror_traffic.grene: 'grene' is not a deployment of this endpoint "
            "(deployments: blue)"
        ],
        id="mirror-unknown",
    ),
    pytest.param(
        document(endpoint(mirror_traffic={"blue": 51})),
        [f"{E0}.mirror_traffic.blue: must be at most 50 (got 51)"],
        id="mirror-over-50",
    ),
    pytest.param(
        document(endpoint(mirror_traffic={"blue": 0})),
        [f"{E0}.mirror_traffic.blue: must be at least 1 (got 0)"],
        id="mirror-zero",
    ),
    # replica source
    pytest.param(
        with_urls(command=["serve", "{port}"]),
        [
            f"{D0}: set exactly one of 'urls' (replicas that already run) or 'command' "
            "(replicas the router starts); both are set"
        ],
        id="urls-and-command",
    ),
    pytest.param(
        with_urls(urls=DROP),
        [
            f"{D0}: set exactly one of 'urls' (replicas that already run) or 'command' "
            "(replicas the router starts); neither is set"
        ],
        id="neither-urls-nor-command",
    ),
    pytest.param(
        with_urls(urls="http://127.0.0.1:5001"),
        [
            f"{D0}.urls: must be a list, not a single string (got 'http://127.0.0.1:5001'); "
            'write ["a", "b"] or one \'- item\' line per entry'
        ],
        id="urls-string",
    ),
    pytest.param(
        with_urls(urls=[]),
        [f"{D0}.urls: must list at least one url"],
        id="urls-empty",
    ),
    pytest.param(
        with_urls(
            urls=[
                "https://127.0.0.1:1",
                "http://127.0.0.1",
                "http://127.0.0.1:5/score",
                "http://127.0.0.1:99999",
                "http://127.0.0.1:0",
                "127.0.0.1:5001",
            ]
        ),
        [
            f"{D0}.urls[0]: 'https://127.0.0.1:1' must start with http:// (only plain HTTP "
            "replicas are supported)",
            f"{D0}.urls[1]: 'http://127.0.0.1' needs a host and a port, e.g. http://127.0.0.1:5001",
            f"{D0}.urls[2]: 'http://127.0.0.1:5/score' must be just http://HOST:PORT; set the "
            "path with scoring_route instead",
            f"{D0}.urls[3]: 'http://127.0.0.1:99999' has an invalid port; use a number from 1 "
            "to 65535",
            f"{D0}.urls[4]: 'http://127.0.0.1:0' has port 0; use the port the replica listens on",
            f"{D0}.urls[5]: '127.0.0.1:5001' must start with http:// (only plain HTTP replicas "
            "are supported)",
        ],
        id="bad-urls",
    ),
    pytest.param(
        with_urls(urls=["http://127.0.0.1:5001", "http://127.0.0.1:5001/"]),
        [f"{D0}.urls[1]: 'http://127.0.0.1:5001/' is listed twice"],
        id="duplicate-url",
    ),
    pytest.param(
        with_command(command=["python", "serve.py"]),
        [
            f"{D0}.command: no argument contains '{{port}}'; the router picks each replica's "
            'port and passes it there, e.g. ["python", "serve.py", "--port", "{port}"]'
        ],
        id="command-without-port",
    ),
    pytest.param(
        with_command(command=["serve", "--port", 8000]),
        [f"{D0}.command[2]: must be a string (got 8000); put the value in quotes"],
        id="command-argument-not-a-string",
    ),
    pytest.param(
        with_command(command=[]),
        [f"{D0}.command: must list at least one entry"],
        id="command-empty",
    ),
    pytest.param(
        with_command(command="serve --port {port}"),
        [
            f"{D0}.command: must be a list, not a single string (got 'serve --port {{port}}'); "
            'write ["a", "b"] or one \'- item\' line per entry'
        ],
        id="command-string",
    ),
    pytest.param(
        with_urls(env={"A": "1"}, cwd="."),
        [
            f"{D0}.env: 'env' applies only to 'command' replicas; remove it",
            f"{D0}.cwd: 'cwd' applies only to 'command' replicas; remove it",
        ],
        id="env-and-cwd-with-urls",
    ),
    pytest.param(
        with_command(env={"DEBUG": True, "A=B": "x"}),
        [
            f'{D0}.env.DEBUG: must be a string; quote it, e.g. "true"',
            f"{D0}.env.A=B: invalid name: 'A=B' is not a valid environment variable name",
        ],
        id="env-problems",
    ),
    pytest.param(
        with_command(cwd="missing-dir"),
        [f"{D0}.cwd: directory 'TMP/missing-dir' does not exist"],
        id="cwd-missing",
    ),
    # scale settings
    pytest.param(
        with_urls(scale_settings={"type": "target_utilization"}),
        [
            f"{D0}.scale_settings.type: target_utilization needs 'command' replicas: the router "
            "can only scale replicas it starts itself; use type: default with 'urls'"
        ],
        id="autoscale-needs-command",
    ),
    pytest.param(
        with_command(scale_settings={"min_instances": 3, "max_instances": 2}),
        [f"{D0}.scale_settings.max_instances: must be at least min_instances (3); got 2"],
        id="max-below-min",
    ),
    pytest.param(
        with_command(
            scale_settings={
                "type": "target",
                "max_instances": 0,
                "target_utilization_percentage": 101,
                "polling_interval": 0,
                "scale_down_delay_s": -1,
            }
        ),
        [
            f"{D0}.scale_settings.type: must be 'default' or 'target_utilization' (got 'target'); "
            "did you mean 'target_utilization'?",
            f"{D0}.scale_settings.max_instances: must be at least 1 (got 0)",
            f"{D0}.scale_settings.target_utilization_percentage: must be at most 100 (got 101)",
            f"{D0}.scale_settings.polling_interval: must be greater than 0 (got 0)",
            f"{D0}.scale_settings.scale_down_delay_s: must be at least 0 (got -1)",
        ],
        id="scale-fields",
    ),
    pytest.param(
        with_command(instance_count=-1),
        [f"{D0}.instance_count: must be at least 0 (got -1)"],
        id="instance-count-negative",
    ),
    # request settings
    pytest.param(
        with_urls(
            request_settings={
                "request_timeout_ms": 0,
                "max_concurrent_requests_per_instance": 0,
                "max_queue_wait_ms": -1,
                "max_queued_requests": -1,
            }
        ),
        [
            f"{D0}.request_settings.request_timeout_ms: must be at least 1 (got 0)",
            f"{D0}.request_settings.max_concurrent_requests_per_instance: must be at least 1 "
            "(got 0)",
            f"{D0}.request_settings.max_queue_wait_ms: must be at least 0 (got -1)",
            f"{D0}.request_settings.max_queued_requests: must be at least 0 (got -1)",
        ],
        id="request-settings-ranges",
    ),
    pytest.param(
        with_urls(request_settings={"request_timeout_ms": "5000", "max_queue_wait_ms": True}),
        [
            f"{D0}.request_settings.request_timeout_ms: must be a whole number (got '5000')",
            f"{D0}.request_settings.max_queue_wait_ms: must be a whole number (got true)",
        ],
        id="numbers-are-not-coerced",
    ),
    # probes and routes
    pytest.param(
        with_urls(
            readiness_probe={
                "path": "ready",
                "initial_delay": -1,
                "period": 0,
                "timeout": 0,
                "success_threshold": 0,
                "failure_threshold": 0,
            }
        ),
        [
            f"{D0}.readiness_probe.path: 'ready' must start with '/' (for example '/ready')",
            f"{D0}.readiness_probe.initial_delay: must be at least 0 (got -1)",
            f"{D0}.readiness_probe.period: must be greater than 0 (got 0)",
            f"{D0}.readiness_probe.timeout: must be greater than 0 (got 0)",
            f"{D0}.readiness_probe.success_threshold: must be at least 1 (got 0)",
            f"{D0}.readiness_probe.failure_threshold: must be at least 1 (got 0)",
        ],
        id="probe-fields",
    ),
    pytest.param(
        with_urls(scoring_route="score"),
        [f"{D0}.scoring_route: 'score' must start with '/' (for example '/score')"],
        id="scoring-route",
    ),
    pytest.param(
        with_urls(scoring_route="/a b"),
        [f"{D0}.scoring_route: '/a b' must not contain spaces or control characters"],
        id="scoring-route-space",
    ),
    pytest.param(
        with_urls(liveness_probe=5),
        [f"{D0}.liveness_probe: must be a mapping of settings (got 5)"],
        id="probe-not-a-mapping",
    ),
]


@pytest.mark.parametrize(("content", "expected"), ERROR_CASES)
def test_validation_problems(tmp_path: Path, content: dict[str, Any], expected: list[str]) -> None:
    expected = [line.replace("TMP", str(tmp_path)) for line in expected]  # where files resolve
    assert problems(write(tmp_path, content)) == expected


def test_all_problems_are_reported_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TEST_CONFIG_UNSET", raising=False)
    content = document(
        endpoint(
            auth_mode="key",
            keys={"primary": "${TEST_CONFIG_UNSET}"},
            deployments=[
                deployment(request_settings={"request_timout_ms": 1}),
                command_deployment(command=["serve"], cwd="nowhere"),
            ],
        ),
        endpoint(name="second", traffic={"blue": 50}),
        server={"prot": 1},
    )
    assert problems(write(tmp_path, content)) == [
        "server.prot: unknown setting 'prot'; did you mean 'port'?",
        "endpoints[0].keys.primary: environment variable 'TEST_CONFIG_UNSET' is not set",
        "endpoints[0].deployments[0].request_settings.request_timout_ms: unknown setting "
        "'request_timout_ms'; did you mean 'request_timeout_ms'?",
        f"endpoints[0].deployments[1].cwd: directory '{tmp_path / 'nowhere'}' does not exist",
        "endpoints[0].deployments[1].command: no argument contains '{port}'; the router picks "
        'each replica\'s port and passes it there, e.g. ["python", "serve.py", "--port", '
        '"{port}"]',
        "endpoints[1].traffic: percentages add up to 50; they must add up to 100 (or all be 0)",
    ]


# --- the file itself -----------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    assert problems(path) == ["configuration file not found"]


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert problems(tmp_path) == ["is a directory, not a configuration file"]


def test_path_may_be_a_string(tmp_path: Path) -> None:
    path = write(tmp_path, document())
    assert load_config(str(path)).source == path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "endpoints:\n  - name: abc\n    auth_mode: none\n   deployments: []\n",
            "line 4, column 4: while parsing a block collection, expected <block end>, but found "
            "'<block mapping start>'",
            id="bad-indent",
        ),
        pytest.param(
            "endpoints: [\n",
            "line 2, column 1: while parsing a flow node, expected the node content, but found "
            "'<stream end>'",
            id="unclosed-bracket",
        ),
        pytest.param(
            "endpoints:\n  - name: a: b\n",
            "line 2, column 12: mapping values are not allowed here",
            id="colon-in-value",
        ),
        pytest.param(
            "server: {}\nendpoints: []\nserver: {port: 1}\n",
            "line 3, column 1: duplicate key 'server' (first set on line 1)",
            id="duplicate-key",
        ),
        pytest.param(
            "endpoints: []\n---\nendpoints: []\n",
            "line 2, column 1: expected a single document in the stream, but found another "
            "document",
            id="two-documents",
        ),
        pytest.param("", "the file is empty; it needs at least an 'endpoints' list", id="empty"),
        pytest.param(
            "# only a comment\n",
            "the file is empty; it needs at least an 'endpoints' list",
            id="only-comment",
        ),
        pytest.param(
            "- name: abc\n",
            "the top level must be a mapping of settings (server, endpoints), not a list",
            id="top-level-list",
        ),
    ],
)
def test_yaml_problems(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "inferfront.yaml"
    path.write_text(text)
    assert problems(path) == [expected]


def test_yaml_tags_cannot_build_python_objects(tmp_path: Path) -> None:
    path = tmp_path / "inferfront.yaml"
    path.write_text("endpoints: !!python/object/apply:os.system ['true']\n")
    [problem] = problems(path)
    assert problem.startswith("line 1, column 12: could not determine a constructor")


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "inferfront.yaml"
    path.write_bytes(b"endpoints: [\xff]\n")
    assert problems(path) == ["the file is not UTF-8 text"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path, document())
    path.chmod(0)
    assert problems(path) == ["cannot read the file: Permission denied"]


# --- models built in code (no loader) ------------------------------------------------------------


def test_models_can_be_built_in_code() -> None:
    config = Config(
        endpoints=[
            Endpoint(
                name="code-made",
                keys={"primary": "k"},
                traffic={"one": 100},
                deployments=[Deployment(name="one", urls=["http://127.0.0.1:6000"])],
            )
        ]
    )
    assert config.source is None
    assert config.base_dir == Path.cwd()
    assert config.endpoints[0].primary_key == "k"
    assert config.endpoints[0].deployments[0].addresses == (("127.0.0.1", 6000),)
    assert "configuration: (built in code)" in summarize(config)


def test_rule_violations_read_well_without_the_loader() -> None:
    with pytest.raises(ValidationError) as raised:
        Endpoint(
            name="code-made",
            auth_mode="none",
            traffic={"one": 60, "two": 30},
            deployments=[Deployment(name="one", command=["serve", "{port}"])],
        )
    assert (
        "traffic.two: 'two' is not a deployment of this endpoint (deployments: one); "
        "traffic: percentages add up to 90; they must add up to 100 (or all be 0)"
    ) in str(raised.value)


def test_command_for_port_refuses_url_deployments() -> None:
    with pytest.raises(ValueError, match="has urls, not a command"):
        Deployment(name="one", urls=["http://127.0.0.1:6000"]).command_for_port(1)


# --- summary and examples ------------------------------------------------------------------------


def test_summary_describes_what_the_router_will_do(full_config: Config, tmp_path: Path) -> None:
    summary = summarize(full_config)
    expected_lines = [
        f"configuration: {tmp_path / 'inferfront.yaml'}",
        "  requests on http://0.0.0.0:8000, admin on http://127.0.0.1:8001",
        "  access log off, 3 connect retries, drain timeout 12.5s",
        "  limits: request line 4 KiB, headers 32 KiB / 50, body 1 MiB, replay buffer 0 B",
        "endpoint my-endpoint",
        "  auth: key (primary and secondary)",
        "  traffic: blue 90%, green 10%",
        "  mirror: 10% of live traffic copied to green (answers discarded)",
        "  deployment blue",
        "    replicas: 3 already running at http://127.0.0.1:5001, http://localhost:5002/, "
        "http://[::1]:5003",
        "    scoring route: /v1/score",
        "    requests: timeout 2500 ms, 4 concurrent per replica, queue wait up to 0 ms, "
        "queue limit 17",
        "    scaling: fixed (the listed urls)",
        "    liveness probe: GET /live every 0.5s after 0s, timeout 1s, passes after 2 "
        "successes, fails after 3 failures",
        "  deployment green",
        "    replicas: started by the router: python serve.py --port={port} in "
        f"{tmp_path / 'app'} (extra environment: WORKERS, MODE, RATIO)",
        "    requests: timeout 5000 ms, 1 concurrent per replica, queue wait up to 500 ms, "
        "queue limit 18 (derived)",
        "    scaling: autoscale 2-5 replicas (starts with 5) at 60% utilization, checked every "
        "0.5s, scale down after 0s stable",
        "endpoint other-endpoint",
        "  auth: none (anyone can call it)",
        "  traffic: none (all deployments at 0%; only requests naming a deployment in the "
        "azureml-model-deployment header are served)",
        "    scaling: fixed at 1 replica",
    ]
    lines = summary.splitlines()
    for line in expected_lines:
        assert line in lines, f"{line!r} not in summary:\n{summary}"


def test_minimal_example_loads() -> None:
    config = load_config(EXAMPLES / "minimal.yaml")
    endpoint_ = config.endpoints[0]
    assert endpoint_.auth_mode == "none"
    assert endpoint_.traffic == {"blue": 100}
    assert endpoint_.deployments[0].addresses == (("127.0.0.1", 5001),)
    assert config.server == ServerSettings()


def test_full_example_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERFRONT_PRIMARY_KEY", "example-primary")
    monkeypatch.setenv("INFERFRONT_SECONDARY_KEY", "example-secondary")
    config = load_config(EXAMPLES / "full.yaml")
    endpoint_ = config.endpoints[0]
    assert endpoint_.accepted_keys == ("example-primary", "example-secondary")
    assert endpoint_.mirror == ("green", 10)
    blue, green = endpoint_.deployments
    assert blue.autoscaled
    assert blue.cwd == REPO_ROOT
    assert blue.initial_replicas == 2
    assert blue.effective_max_queued_requests == 8
    assert green.addresses == (("127.0.0.1", 5101), ("127.0.0.1", 5102))
    assert "example-primary" not in summarize(config)


def test_full_example_without_keys_names_both_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INFERFRONT_PRIMARY_KEY", raising=False)
    monkeypatch.delenv("INFERFRONT_SECONDARY_KEY", raising=False)
    assert problems(EXAMPLES / "full.yaml") == [
        "endpoints[0].keys.primary: environment variable 'INFERFRONT_PRIMARY_KEY' is not set",
        "endpoints[0].keys.secondary: environment variable 'INFERFRONT_SECONDARY_KEY' is not set",
    ]
