"""Ports: pick free ones, and tell a port someone listens on from one where old connections of a
stopped server linger (TIME-WAIT).

nginx and TorchServe bind their ports with ``SO_REUSEADDR``, so connections of the last run
that linger in TIME-WAIT do not stop them; only a socket that listens (or one bound without
reuse) does. The check binds the same way, and names the process behind a busy port.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable

import psutil

from medfakedet.deploy.config import DEFAULT_PORTS, DeployError

HOST = "127.0.0.1"  # every server of the stack binds to loopback (see render.py)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def free_ports(names: Iterable[str] = DEFAULT_PORTS) -> dict[str, int]:
    """One distinct free port per name, e.g. a whole stack's ports for a test."""
    names = list(names)
    ports: dict[str, int] = {}
    while len(set(ports.values())) < len(names):
        ports = {name: free_port() for name in names}
    return ports


def can_bind(port: int, host: str = HOST) -> bool:
    """Whether a server could bind ``host:port`` now, with ``SO_REUSEADDR`` as nginx and
    TorchServe do: False when something listens there; lingering TIME-WAIT connections do not
    count."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _describe_process(pid: int) -> str:
    try:
        proc = psutil.Process(pid)
        cmd = " ".join(proc.cmdline()) or proc.name()
        if len(cmd) > 160:  # both ends: java's main class comes last
            cmd = f"{cmd[:70]} ... {cmd[-85:]}"
        return f"{proc.name()} (pid {pid}: {cmd})"
    except psutil.AccessDenied:
        return f"pid {pid} (not permitted to read its name)"
    except psutil.NoSuchProcess:
        return f"pid {pid} (exited just now)"


def port_owner(port: int) -> str:
    """Who listens on ``port``, for people: the process names and pids, or why we cannot tell."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return (
            "a process this user is not permitted to look up "
            f"(as root: ss -ltnp 'sport = :{port}' or lsof -i :{port})"
        )
    listening = [
        c for c in conns if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
    ]
    if not listening:
        return "a socket bound without SO_REUSEADDR (nothing listens)"
    pids = sorted({c.pid for c in listening if c.pid})
    if not pids:
        return (
            "a process of another user (not permitted to see which; "
            f"as root: ss -ltnp 'sport = :{port}')"
        )
    return ", ".join(_describe_process(pid) for pid in pids)


def check_ports_free(ports: dict[str, int]) -> None:
    """Raise unless nginx and TorchServe could bind every port of ``ports`` now.

    Raises:
        DeployError: names the port, its role and the process that holds it.
    """
    for name, port in ports.items():
        if not can_bind(port):
            raise DeployError(
                f"port {port} ({name}) is in use by {port_owner(port)}. Is a stack already "
                "running (python -m medfakedet.deploy status)? Stop it or choose another "
                f"port (--{name.replace('_', '-')}-port N)"
            )
