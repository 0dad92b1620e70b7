"""
Debian's nginx as a plain process with a generated configuration in a
temporary directory: never the system service, listening on 127.0.0.1 only,
one worker, its pid file, logs and temporary files in that directory.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Optional, Sequence, Tuple

from benchmarks.certificate import Tls
from benchmarks.processes import Server, children, pinned
from gourmet.tls.store import INTERMEDIATE_CIPHERS

#: The bodies every upstream port serves, by path.
SMALL_PATH = "/small"
LARGE_PATH = "/1m"
SLOW_PATH = "/slow"
SMALL_SIZE = 128
LARGE_SIZE = 1024 * 1024


def write_bodies(root: Path, slow_size: int) -> None:
    """
    The files the upstream serves: a small body, 1 MiB, and the slow
    client's large response (sparse: it takes no disk space).
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / SMALL_PATH.lstrip("/")).write_bytes(b"x" * SMALL_SIZE)
    (root / LARGE_PATH.lstrip("/")).write_bytes(b"y" * LARGE_SIZE)
    with (root / SLOW_PATH.lstrip("/")).open("wb") as slow:
        slow.truncate(slow_size)


def _main_context(workdir: Path, name: str) -> str:
    temp = workdir / f"{name}-temp"
    return f"""\
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 8192;
pid {workdir}/{name}.pid;
error_log {workdir}/{name}-error.log warn;
events {{ worker_connections 4096; }}
http {{
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    default_type application/octet-stream;
"""


def upstream_config(workdir: Path, root: Path, ports: Sequence[int]) -> str:
    """
    The upstream: static files from ``root`` on each of ``ports``, no
    access log (it is the limit, not a contender).
    """
    servers = "".join(
        f"    server {{ listen 127.0.0.1:{port}; root {root}; }}\n" for port in ports
    )
    return (
        _main_context(workdir, "upstream")
        + "    access_log off;\n    sendfile on;\n    tcp_nopush on;\n"
        + servers
        + "}\n"
    )


def proxy_config(
    workdir: Path,
    port: int,
    upstream_ports: Sequence[int],
    access_log: Path,
    tls: Optional[Tls] = None,
    name: str = "nginx-proxy",
    websocket: bool = False,
) -> str:
    """
    nginx as a load balancer in front of ``upstream_ports``, as a user would
    set it up: keep-alive to the upstreams and an access log to a file;
    with ``tls``, HTTPS and HTTP/2 on ``port``; with ``websocket``, the
    upgrade headers passed on as nginx's WebSocket page says, and an hour
    for a quiet tunnel (Gourmet's ``tunnel_idle_timeout``).
    """
    servers = "".join(f"        server 127.0.0.1:{p};\n" for p in upstream_ports)
    return (
        _main_context(workdir, name)
        # Buffered as Gourmet's is (flushed each second).
        + f"    access_log {access_log} combined"
        + " buffer=64k flush=1s;\n"
        + "    upstream bench {\n"
        + servers
        + "        keepalive 32;\n    }\n"
        + "    server {\n"
        + (_tls_server(port, tls) if tls else f"        listen 127.0.0.1:{port};\n")
        + "        location / {\n"
        + "            proxy_pass http://bench;\n"
        + "            proxy_http_version 1.1;\n"
        + (_WEBSOCKET if websocket else '            proxy_set_header Connection "";\n')
        + "        }\n    }\n}\n"
    )


#: https://nginx.org/en/docs/http/websocket.html
_WEBSOCKET = (
    "            proxy_set_header Upgrade $http_upgrade;\n"
    '            proxy_set_header Connection "upgrade";\n'
    "            proxy_read_timeout 3600s;\n"
)


def _tls_server(port: int, tls: Tls) -> str:
    """
    A server block's HTTPS lines, with Gourmet's protocols and ciphers.
    """
    # `http2 on;` came with nginx 1.25.1; before it (Debian 12 has 1.22.1,
    # which refuses `http2 on;` as an unknown directive) HTTP/2 is a flag of
    # `listen`.
    if version_number() >= (1, 25, 1):
        listen = f"listen 127.0.0.1:{port} ssl;\n        http2 on;"
    else:
        listen = f"listen 127.0.0.1:{port} ssl http2;"
    return (
        f"        {listen}\n"
        f"        ssl_certificate {tls.cert};\n"
        f"        ssl_certificate_key {tls.key};\n"
        "        ssl_protocols TLSv1.2 TLSv1.3;\n"
        f"        ssl_ciphers {INTERMEDIATE_CIPHERS.decode()};\n"
        # nginx closes a connection after 1,000 requests (HTTP/2's too,
        # since 1.19.7) and h2load does not open another in a timed run:
        # its clients would sit idle.  Gourmet sets no such limit.
        "        keepalive_requests 1000000;\n"
    )


def replaced(config: str, old: str, new: str) -> str:
    """
    ``config`` with ``old`` replaced by ``new``; ``old`` must be there, so
    that a change to this module cannot silently undo the caller's change.
    """
    if old not in config:
        raise RuntimeError(f"benchmarks.nginx no longer writes {old.strip()!r}")
    return config.replace(old, new)


class Nginx(Server):
    """
    An nginx master and its one worker, from ``config`` written into
    ``workdir``; its memory is the worker's.
    """

    def __init__(
        self,
        name: str,
        workdir: Path,
        config: str,
        port: int,
        cpu: Optional[int],
    ) -> None:
        path = workdir / f"{name}.conf"
        (workdir / f"{name}-temp").mkdir(exist_ok=True)
        path.write_text(config)
        command = ["nginx", "-p", str(workdir), "-c", str(path)]
        command += ["-e", str(workdir / f"{name}-error.log")]
        super().__init__(name, pinned(command, cpu), port, workdir / f"{name}.out")

    @property
    def rss_pid(self) -> int:
        workers = children(self.pid)
        return workers[0] if workers else self.pid


def version() -> str:
    result = subprocess.run(
        ["nginx", "-v"], capture_output=True, text=True, timeout=10, check=False
    )
    return result.stderr.strip().removeprefix("nginx version: ")


def version_number() -> Tuple[int, ...]:
    """
    :func:`version` as numbers (``(1, 22, 1)``; ``()`` if unknown).
    """
    match = re.match(r"nginx/([\d.]+)", version())
    return tuple(int(n) for n in match.group(1).split(".")) if match else ()


def upstream(
    workdir: Path, ports: Sequence[int], large: int, cpu: Optional[int] = None
) -> Nginx:
    """
    The upstream, not started: nginx serving the bodies (the large one of
    ``large`` bytes) from ``workdir``'s ``html`` on each of ``ports``,
    pinned to ``cpu`` if given.
    """
    root = workdir / "html"
    write_bodies(root, large)
    config = upstream_config(workdir, root, ports)
    return Nginx("upstream", workdir, config, ports[0], cpu)
