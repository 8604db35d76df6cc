"""Configuration: YAML file -> validated, frozen models (names follow Azure ML's online YAML)."""

from inferfront.config.errors import ConfigError
from inferfront.config.loader import load_config, resolve_secret, summarize
from inferfront.config.model import (
    Config,
    Deployment,
    Endpoint,
    EndpointKeys,
    Limits,
    Probe,
    RequestSettings,
    ScaleSettings,
    ServerSettings,
    parse_replica_url,
)

__all__ = [
    "Config",
    "ConfigError",
    "Deployment",
    "Endpoint",
    "EndpointKeys",
    "Limits",
    "Probe",
    "RequestSettings",
    "ScaleSettings",
    "ServerSettings",
    "load_config",
    "parse_replica_url",
    "resolve_secret",
    "summarize",
]
