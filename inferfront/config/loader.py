"""Read a YAML configuration file into a validated `Config`, or explain everything wrong with it.

Every problem becomes one `FILE: PATH: MESSAGE` line (PATH like `endpoints[0].deployments[1].name`)
and all of them are raised together as one `ConfigError`, so a user fixes a file in one pass.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from inferfront.config.errors import ConfigError, Location, RuleViolations, format_location
from inferfront.config.model import (
    FILE_TOP_LEVEL_SETTINGS,
    Config,
    Deployment,
    Endpoint,
    Probe,
    ServerSettings,
)

_ENV_REFERENCE = re.compile(r"\$\{(?P<name>[^}]*)\}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FILE_PREFIX = "file:"
# Top-level keys starting with this are ignored (as in Docker Compose), so they can hold anchors.
EXTENSION_PREFIX = "x-"
_MISSING_HINTS = {
    "endpoints": "required setting is missing: list at least one endpoint",
    "deployments": "required setting is missing: list at least one deployment",
    "primary": "required setting is missing: the primary key",
}

Problem = tuple[Location, str]


def load_config(path: str | Path) -> Config:
    """Load and validate `path`; raise `ConfigError` listing every problem found."""
    shown = str(path)
    source = Path(path).expanduser().absolute()
    raw = _parse_yaml(_read_text(source, shown), shown)
    problems = _check_top_level(raw, shown)
    base_dir = source.parent
    problems += _resolve_secrets_and_directories(raw, base_dir)
    config: Config | None = None
    try:
        config = Config.model_validate({**raw, "source": source, "base_dir": base_dir})
    except ValidationError as error:
        problems += _translate(error)
    if problems or config is None:
        raise ConfigError(
            [_format_problem(shown, loc, message) for loc, message in _ordered(problems)]
        )
    return config


def _format_problem(shown: str, loc: Location, message: str) -> str:
    return f"{shown}: {format_location(loc)}: {message}" if loc else f"{shown}: {message}"


def _ordered(problems: list[Problem]) -> list[Problem]:
    # Group by endpoint then deployment (the order a reader scans the file); stable otherwise.
    def position(problem: Problem) -> tuple[int, ...]:
        return tuple(part for part in problem[0] if isinstance(part, int))[:2]

    return sorted(problems, key=position)


# --- reading and parsing -------------------------------------------------------------------------


def _read_text(source: Path, shown: str) -> str:
    try:
        return source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{shown}: configuration file not found"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{shown}: is a directory, not a configuration file"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{shown}: the file is not UTF-8 text"]) from None
    except OSError as error:
        raise ConfigError([f"{shown}: cannot read the file: {error.strerror}"]) from None


class _StrictSafeLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last one."""


def _construct_mapping_without_duplicates(
    loader: _StrictSafeLoader, node: yaml.MappingNode
) -> dict[Any, Any]:
    # Only keys written in this mapping count: keys merged in with `<<` may be overridden.
    first_marks: dict[Any, yaml.Mark] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = first_marks.setdefault(key, key_node.start_mark)
        except TypeError:
            continue  # unhashable key: construct_mapping reports it properly
        if first is not key_node.start_mark:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key '{key}' (first set on line {first.line + 1})",
                key_node.start_mark,
            )
    return loader.construct_mapping(node, deep=True)


_StrictSafeLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping_without_duplicates
)


def _parse_yaml(text: str, shown: str) -> Any:
    try:
        # A SafeLoader subclass: plain data only, never arbitrary Python objects.
        return yaml.load(text, Loader=_StrictSafeLoader)
    except yaml.MarkedYAMLError as error:
        raise ConfigError([f"{shown}: {_describe_yaml_error(error)}"]) from None
    except yaml.YAMLError as error:
        raise ConfigError([f"{shown}: invalid YAML: {error}"]) from None


def _describe_yaml_error(error: yaml.MarkedYAMLError) -> str:
    mark = error.problem_mark or error.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = error.problem or "invalid YAML"
    # PyYAML splits sentences like "expected a single document in the stream, but found another
    # document" into context + problem; put them back together.
    return f"{where}{error.context}, {problem}" if error.context else f"{where}{problem}"


def _check_top_level(raw: Any, shown: str) -> list[Problem]:
    """Top-level shape; raises at once if the document is not a mapping (nothing else to check)."""
    if raw is None:
        raise ConfigError([f"{shown}: the file is empty; it needs at least an 'endpoints' list"])
    if not isinstance(raw, dict):
        raise ConfigError(
            [
                f"{shown}: the top level must be a mapping of settings (server, endpoints), "
                f"not {_kind(raw)}"
            ]
        )
    problems: list[Problem] = []
    for key in list(raw):
        if isinstance(key, str) and key.startswith(EXTENSION_PREFIX):
            del raw[key]  # a place for YAML anchors shared by several sections
        elif key not in FILE_TOP_LEVEL_SETTINGS:
            problems.append(((str(key),), _unknown_setting(key, FILE_TOP_LEVEL_SETTINGS)))
            del raw[key]
    return problems


# --- secrets and directories (resolved relative to the configuration file) -----------------------


def resolve_secret(value: str, base_dir: Path) -> str:
    """A literal, `${ENV_VAR}`, or `file:PATH` (relative to `base_dir`, contents stripped).

    Raises ValueError with a message that never contains the secret itself.
    """
    reference = _ENV_REFERENCE.fullmatch(value)
    if reference:
        return _secret_from_environment(reference.group("name"))
    if value.startswith(_FILE_PREFIX):
        return _secret_from_file(value.removeprefix(_FILE_PREFIX), base_dir)
    return value


def _secret_from_environment(name: str) -> str:
    if not _ENV_NAME.fullmatch(name):
        raise ValueError(
            f"'${{{name}}}' is not a valid environment variable reference; "
            "use ${NAME} with letters, digits and underscores"
        )
    if name not in os.environ:
        raise ValueError(f"environment variable '{name}' is not set")
    secret = os.environ[name].strip()
    if not secret:
        raise ValueError(f"environment variable '{name}' is empty")
    return secret


def _secret_from_file(relative: str, base_dir: Path) -> str:
    if not relative.strip():
        raise ValueError("'file:' needs a path, e.g. file:secrets/primary.key")
    path = base_dir / Path(relative.strip()).expanduser()
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ValueError(f"cannot read key file '{path}': file not found") from None
    except UnicodeDecodeError:
        raise ValueError(f"cannot read key file '{path}': not UTF-8 text") from None
    except OSError as error:
        raise ValueError(f"cannot read key file '{path}': {error.strerror}") from None
    if not secret:
        raise ValueError(f"key file '{path}' is empty")
    return secret


def _resolve_secrets_and_directories(raw: dict[str, Any], base_dir: Path) -> list[Problem]:
    """Rewrite key references and `cwd` in the raw document; shapes pydantic will reject are
    skipped here (it reports them)."""
    problems: list[Problem] = []
    endpoints = raw.get("endpoints")
    if not isinstance(endpoints, list):
        return problems
    for index, endpoint in enumerate(endpoints):
        if not isinstance(endpoint, dict):
            continue
        problems += _resolve_keys(endpoint, ("endpoints", index, "keys"), base_dir)
        deployments = endpoint.get("deployments")
        if not isinstance(deployments, list):
            continue
        for position, deployment in enumerate(deployments):
            if isinstance(deployment, dict):
                loc = ("endpoints", index, "deployments", position, "cwd")
                problems += _resolve_cwd(deployment, loc, base_dir)
    return problems


def _resolve_keys(endpoint: dict[str, Any], loc: Location, base_dir: Path) -> list[Problem]:
    keys = endpoint.get("keys")
    if not isinstance(keys, dict):
        return []
    problems: list[Problem] = []
    for name, value in keys.items():
        if not isinstance(value, str):
            continue
        try:
            keys[name] = resolve_secret(value, base_dir)
        except ValueError as error:
            problems.append(((*loc, name), str(error)))
    return problems


def _resolve_cwd(deployment: dict[str, Any], loc: Location, base_dir: Path) -> list[Problem]:
    cwd = deployment.get("cwd")
    if cwd is None:
        if deployment.get("command") is not None:
            deployment["cwd"] = base_dir  # command replicas run in the config file's folder
        return []
    if not isinstance(cwd, str):
        return []
    resolved = Path(os.path.normpath(base_dir / Path(cwd).expanduser()))
    if not resolved.is_dir():
        return [(loc, f"directory '{resolved}' does not exist")]
    deployment["cwd"] = resolved
    return []


# --- turning pydantic's errors into plain sentences ----------------------------------------------


def _translate(error: ValidationError) -> list[Problem]:
    details = error.errors()
    problems: list[Problem] = []
    for detail in details:
        loc: Location = tuple(detail["loc"])
        if _is_consequence_of_item_errors(detail, details):
            continue
        cause = (detail.get("ctx") or {}).get("error")
        if isinstance(cause, RuleViolations):
            problems += [((*loc, *sub_loc), message) for sub_loc, message in cause.violations]
        elif loc and loc[-1] == "[key]":
            problems.append((loc[:-1], "invalid name: " + _message(detail, loc[:-1])))
        else:
            problems.append((loc, _message(detail, loc)))
    return problems


def _is_consequence_of_item_errors(detail: Any, details: list[Any]) -> bool:
    # Pydantic re-checks a list's minimum length after dropping invalid items, which adds a
    # misleading "too short" error on top of the real ones.
    if detail["type"] != "too_short":
        return False
    loc = tuple(detail["loc"])
    return any(
        len(other["loc"]) > len(loc)
        and tuple(other["loc"][: len(loc)]) == loc
        and isinstance(other["loc"][len(loc)], int)
        for other in details
    )


def _message(detail: Any, loc: Location) -> str:
    kind = detail["type"]
    ctx = detail.get("ctx") or {}
    # Never echo what was written under `keys`: it may be a secret.
    got = "" if "keys" in loc else f" (got {_show(detail.get('input'))})"
    simple = {
        "int_type": f"must be a whole number{got}",
        "int_parsing": f"must be a whole number{got}",
        "int_from_float": f"must be a whole number{got}",
        "float_type": f"must be a number{got}",
        "float_parsing": f"must be a number{got}",
        "finite_number": f"must be a finite number{got}",
        "bool_type": f"must be true or false{got}",
        "bool_parsing": f"must be true or false{got}",
        "string_too_short": "must not be empty",
        "dict_type": f"must be a mapping of name: value pairs{got}",
        "model_type": f"must be a mapping of settings{got}",
        "model_attributes_type": f"must be a mapping of settings{got}",
        "path_type": f"must be a path (a string){got}",
        "greater_than_equal": f"must be at least {_number(ctx.get('ge'))}{got}",
        "greater_than": f"must be greater than {_number(ctx.get('gt'))}{got}",
        "less_than_equal": f"must be at most {_number(ctx.get('le'))}{got}",
        "less_than": f"must be less than {_number(ctx.get('lt'))}{got}",
        "too_long": f"has too many entries (at most {ctx.get('max_length')})",
    }
    if kind in simple:
        return simple[kind]
    if kind == "missing":
        return _MISSING_HINTS.get(str(loc[-1]) if loc else "", "required setting is missing")
    if kind == "extra_forbidden":
        return _unknown_setting(loc[-1], _settings_at(loc[:-1]))
    if kind == "string_type":
        return _string_expected(detail.get("input"), got)
    if kind in ("list_type", "tuple_type"):
        return _list_expected(detail.get("input"), got)
    if kind == "too_short":
        return _too_short(loc, ctx.get("min_length", 1))
    if kind == "literal_error":
        return _literal_expected(str(ctx.get("expected", "")), detail.get("input"), got)
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    return str(detail["msg"])


def _string_expected(value: Any, got: str) -> str:
    if isinstance(value, bool | int | float) or value is None:
        return f"must be a string{got}; put the value in quotes"
    return f"must be a string{got}"


def _list_expected(value: Any, got: str) -> str:
    if isinstance(value, str):
        return (
            f'must be a list, not a single string{got}; write ["a", "b"] or one \'- item\' '
            "line per entry"
        )
    return f"must be a list{got}"


def _too_short(loc: Location, min_length: int) -> str:
    things = {"endpoints": "endpoint", "deployments": "deployment", "urls": "url"}
    name = str(loc[-1]) if loc else ""
    if min_length == 1:
        return f"must list at least one {things.get(name, 'entry')}"
    return f"must list at least {min_length} entries"


def _literal_expected(expected: str, value: Any, got: str) -> str:
    message = f"must be {expected}{got}"
    choices = re.findall(r"'([^']*)'", expected)
    if isinstance(value, str):
        close = difflib.get_close_matches(value, choices, n=1) or [
            choice for choice in choices if value and choice.startswith(value)
        ]
        if close:
            message += f"; did you mean '{close[0]}'?"
    return message


def _unknown_setting(key: Any, valid: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(key), valid, n=1) if valid else []
    if close:
        return f"unknown setting '{key}'; did you mean '{close[0]}'?"
    if valid:
        return f"unknown setting '{key}'; valid settings here: {', '.join(valid)}"
    return f"unknown setting '{key}'"


def _settings_at(loc: Location) -> tuple[str, ...]:
    """Names of the settings the model at `loc` accepts (for "did you mean" hints)."""
    if not loc:
        return FILE_TOP_LEVEL_SETTINGS
    annotation: Any = Config
    for part in loc:
        annotation = _step_into(_unwrap(annotation), part)
        if annotation is None:
            return ()
    model = _unwrap(annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return tuple(model.model_fields)
    return ()


def _unwrap(annotation: Any) -> Any:
    """Strip `Annotated[...]` and `X | None` down to the type that holds the value."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, UnionType):
            remaining = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(remaining) != 1:
                return annotation
            annotation = remaining[0]
        else:
            return annotation


def _step_into(annotation: Any, part: str | int) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(str(part))
        return field.annotation if field else None
    origin = get_origin(annotation)
    if origin in (tuple, list) and isinstance(part, int):
        return get_args(annotation)[0]
    if origin is dict:
        return get_args(annotation)[1]
    return None


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{type(value).__name__} {value!r}" if isinstance(value, str) else str(value)


def _show(value: Any) -> str:
    if isinstance(value, dict | list) or value is None or isinstance(value, bool):
        return _kind(value)
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- human summary -------------------------------------------------------------------------------


def summarize(config: Config) -> str:
    """A readable description of what the configuration will do (for `inferfront check`)."""
    lines = [f"configuration: {config.source or '(built in code)'}"]
    lines += _summarize_server(config.server)
    for endpoint in config.endpoints:
        lines += _summarize_endpoint(endpoint)
    return "\n".join(lines)


def _summarize_server(server: ServerSettings) -> list[str]:
    limits = server.limits
    return [
        "server",
        f"  requests on http://{server.host}:{server.port}, "
        f"admin on http://{server.admin_host}:{server.admin_port}",
        f"  access log {'on' if server.access_log else 'off'}, {server.retries} connect "
        f"retries, drain timeout {_seconds(server.drain_timeout_s)}",
        f"  limits: request line {_bytes(limits.max_request_line_bytes)}, headers "
        f"{_bytes(limits.max_header_bytes)} / {limits.max_headers}, body "
        f"{_bytes(limits.max_body_bytes)}, replay buffer {_bytes(limits.replay_buffer_bytes)}",
    ]


def _summarize_endpoint(endpoint: Endpoint) -> list[str]:
    if endpoint.auth_mode == "key":
        auth = "key (primary and secondary)" if endpoint.secondary_key else "key (primary only)"
    else:
        auth = "none (anyone can call it)"
    lines = [f"endpoint {endpoint.name}", f"  auth: {auth}", f"  traffic: {_traffic(endpoint)}"]
    if endpoint.mirror:
        name, percent = endpoint.mirror
        lines.append(f"  mirror: {percent}% of live traffic copied to {name} (answers discarded)")
    for deployment in endpoint.deployments:
        lines += _summarize_deployment(deployment)
    return lines


def _traffic(endpoint: Endpoint) -> str:
    if not any(endpoint.traffic.values()):
        return (
            "none (all deployments at 0%; only requests naming a deployment in the "
            "azureml-model-deployment header are served)"
        )
    return ", ".join(f"{name} {percent}%" for name, percent in endpoint.traffic.items())


def _summarize_deployment(deployment: Deployment) -> list[str]:
    settings = deployment.request_settings
    queue_limit = str(deployment.effective_max_queued_requests)
    if settings.max_queued_requests is None:
        queue_limit += " (derived)"
    return [
        f"  deployment {deployment.name}",
        f"    replicas: {_replica_source(deployment)}",
        f"    scoring route: {deployment.scoring_route}",
        f"    requests: timeout {settings.request_timeout_ms} ms, "
        f"{settings.max_concurrent_requests_per_instance} concurrent per replica, queue wait "
        f"up to {settings.max_queue_wait_ms} ms, queue limit {queue_limit}",
        f"    scaling: {_scaling(deployment)}",
        f"    liveness probe: {_probe(deployment.liveness_probe)}",
        f"    readiness probe: {_probe(deployment.readiness_probe)}",
    ]


def _replica_source(deployment: Deployment) -> str:
    if deployment.urls is not None:
        return f"{len(deployment.urls)} already running at {', '.join(deployment.urls)}"
    command = " ".join(_shell_word(argument) for argument in deployment.command or ())
    started = f"started by the router: {command} in {deployment.cwd}"
    if deployment.env:
        started += f" (extra environment: {', '.join(deployment.env)})"
    return started


def _shell_word(argument: str) -> str:
    # Quote only what a reader would misread; `{port}` stays as written.
    return shlex.quote(argument) if not argument or re.search(r"[\s'\"\\]", argument) else argument


def _scaling(deployment: Deployment) -> str:
    if deployment.urls is not None:
        return "fixed (the listed urls)"
    if not deployment.autoscaled:
        return f"fixed at {_count(deployment.instance_count, 'replica')}"
    scale = deployment.scale_settings
    return (
        f"autoscale {scale.min_instances}-{scale.max_instances} replicas (starts with "
        f"{deployment.initial_replicas}) at {scale.target_utilization_percentage}% utilization, "
        f"checked every {_seconds(scale.polling_interval)}, scale down after "
        f"{_seconds(scale.scale_down_delay_s)} stable"
    )


def _probe(probe: Probe) -> str:
    return (
        f"GET {probe.path} every {_seconds(probe.period)} after {_seconds(probe.initial_delay)}, "
        f"timeout {_seconds(probe.timeout)}, passes after "
        f"{_count(probe.success_threshold, 'success')}, fails after "
        f"{_count(probe.failure_threshold, 'failure')}"
    )


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _count(number: int, noun: str) -> str:
    plural = noun + ("es" if noun.endswith("s") else "s")
    return f"{number} {noun if number == 1 else plural}"


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _bytes(size: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"
