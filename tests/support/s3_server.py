"""A real S3-compatible server for tests and benchmarks: moto's server mode on 127.0.0.1, on a free port."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from support.free_port import free_port


def start_s3_server(timeout: float = 60.0) -> tuple[subprocess.Popen, str]:
    """(the server process, its endpoint URL) once the port accepts connections; terminate() the process when done."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    server.terminate()
    raise RuntimeError(f"moto's S3 server did not start on port {port} within {timeout:.0f} s")
