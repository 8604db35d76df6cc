"""Autoscaling: the pure decision (policy.py), its observations (sampler.py), capacity planning."""

from inferfront.scaling.policy import (
    Decision,
    ScalePolicy,
    ScaleState,
    ceil_replicas,
    decide,
    initial_state,
)
from inferfront.scaling.sampler import Sample, UtilizationWindow, utilization

__all__ = [
    "Decision",
    "Sample",
    "ScalePolicy",
    "ScaleState",
    "UtilizationWindow",
    "ceil_replicas",
    "decide",
    "initial_state",
    "utilization",
]
