"""Free loopback ports for locally started replicas."""

from __future__ import annotations

import socket
from collections.abc import Container

_MAX_ATTEMPTS = 50


def pick_free_port(host: str = "127.0.0.1", avoid: Container[int] = ()) -> int:
    """A port on `host` that nothing listens on right now, and not one of `avoid`.

    The socket is closed before the port is returned, so another process could take the port
    before the replica binds it; the caller retries on a new port if the replica exits at once.
    `avoid` holds ports given to replicas that may not have bound them yet (the kernel can hand
    out a just-closed port again).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(_MAX_ATTEMPTS):
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in avoid:
            return port
    raise OSError(f"no free port on {host} outside the {_MAX_ATTEMPTS} already in use")
