"""Free ports for the brokers the tests, the benchmark and the chaos harness start.

Fixed ports made two runs on one machine (a developer's and CI's, or two clones) start brokers on
the same port, and ports in the kernel's ephemeral range (32768-60999 here) can be held by any
client connection, which takes a stopped broker's port ("Address already in use" on restart).
So every run picks, at random, a base port below the ephemeral range whose ports are all free.

    python tests/ports.py 0 1        # a base B with B and B+1 free: a broker and its controller
"""

from __future__ import annotations

import random
import socket
import sys

LOW, HIGH = 20000, 32000  # below Linux's default ephemeral range, above the usual services


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """Any free port the kernel gives (for a metrics or HTTP server of a test's own)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_base(*offsets: int) -> int:
    """A port B such that B + each of `offsets` can be listened on now (default: just B)."""
    offsets = offsets or (0,)
    rng = random.SystemRandom()
    for _ in range(500):
        base = rng.randrange(LOW, HIGH - max(offsets))
        if all(_free(base + offset) for offset in offsets):
            return base
    raise RuntimeError(f"no free ports {offsets} above any base in {LOW}-{HIGH}")


if __name__ == "__main__":
    print(free_base(*(int(arg) for arg in sys.argv[1:])))
