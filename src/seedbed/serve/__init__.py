"""`seedbed serve`: the live page. Watch runs grow in a browser, read-only, on this machine by default.

docs/serve.md says what each page shows; `app.py` has the routes, `data.py` the reading.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Callable
from pathlib import Path

from seedbed.errors import SeedbedError

LOCAL = "127.0.0.1"

__all__ = ["LOCAL", "serve"]


def serve(runs_dir: Path, host: str = LOCAL, port: int = 8765, say: Callable[[str], None] = print) -> None:
    """Serve RUNS_DIR at http://HOST:PORT until Ctrl-C. Port 0 takes a free port (the line printed names it)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise SeedbedError(f"'{runs_dir}' is not a folder: give the folder of runs (default: runs/)")
    sock = _bind(host, port)  # before the slow imports: a taken port is said at once
    import torch
    import uvicorn

    torch.set_num_threads(1)  # the inside view computes on one core: the runs being watched need the others
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{sock.getsockname()[1]}/"
    say(f"serving {runs_dir} (read-only) at {url}")
    if not _is_loopback(host):
        say(f"warning: --host {host} listens beyond this machine: anyone who can reach it can read these runs")
    from seedbed.serve.app import make_app

    config = uvicorn.Config(make_app(runs_dir), log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=1)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket, or one line saying why not (the port is taken, the address is not this machine's)."""
    if not 0 <= port <= 65535:
        raise SeedbedError(f"--port {port} is not a port: give 1-65535 (or 0 for any free one)")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror:
        raise SeedbedError(f"--host {host!r} is not an address of this machine: leave it out (127.0.0.1)") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise SeedbedError(f"port {port} is in use: give another with --port (or --port 0 for any free one)") from None
        raise SeedbedError(f"cannot listen on {host}:{port}: {err.strerror or err}: check --host and --port") from None
    sock.set_inheritable(True)
    return sock


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
