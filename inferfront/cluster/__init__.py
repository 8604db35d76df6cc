"""Cluster membership and coordinator election (see membership.py; local.py for one machine)."""

from inferfront.cluster.local import LocalMembership, MemberIdInUse, encode_name
from inferfront.cluster.membership import (
    DEFAULT_GRACE_S,
    DEFAULT_TICK_INTERVAL_S,
    Elector,
    KeyCallback,
    LeaseInfo,
    Member,
    Membership,
    preferred,
    rendezvous_weight,
    should_claim,
)

__all__ = [
    "DEFAULT_GRACE_S",
    "DEFAULT_TICK_INTERVAL_S",
    "Elector",
    "KeyCallback",
    "LeaseInfo",
    "LocalMembership",
    "Member",
    "MemberIdInUse",
    "Membership",
    "encode_name",
    "preferred",
    "rendezvous_weight",
    "should_claim",
]
