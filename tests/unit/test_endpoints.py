"""A deployment's replicas hold the data plane's keep-alive pool to their address
(endpoints.py PooledReplica): the proxy takes it from the replica it was granted, without a
lookup by address, and a removed replica holds none."""

from __future__ import annotations

from inferfront.config.model import Config
from inferfront.endpoints import Endpoints

CONFIG = {
    "endpoints": [
        {
            "name": name,
            "auth_mode": "none",
            "deployments": [{"name": "blue", "urls": ["http://127.0.0.1:9"]}],
        }
        for name in ("one", "two")
    ]
}


async def test_replicas_hold_the_pool_of_their_address_until_removed() -> None:
    endpoints = Endpoints(list(Config.model_validate(CONFIG).endpoints))
    one, two = endpoints.deployments()
    one.replica_added("a", "127.0.0.1", 5001)
    two.replica_added("a", "127.0.0.1", 5001)  # another deployment, the same server
    one.replica_added("b", "127.0.0.1", 5002)
    pools = endpoints.pools.by_address
    shared = pools["127.0.0.1:5001"]
    assert one.table.replicas["a"].pool is shared
    assert two.table.replicas["a"].pool is shared  # one pool per address, shared
    assert one.table.replicas["b"].pool is pools["127.0.0.1:5002"]

    removed = one.table.replicas["a"]
    one.replica_removed("a")
    assert removed.pool is None  # a request granted it meanwhile is retried elsewhere
    assert two.table.replicas["a"].pool is shared and pools["127.0.0.1:5001"] is shared
    two.replica_removed("a")
    assert "127.0.0.1:5001" not in pools  # its last user gone: closed and dropped

    one.replica_added("a", "127.0.0.1", 5001)  # back at the same address: a new pool
    assert one.table.replicas["a"].pool is pools["127.0.0.1:5001"] is not shared
