"""A TCP port on 127.0.0.1 that nothing listens on, for the servers the tests start (Slurm, S3, the web demo)."""

import socket


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
