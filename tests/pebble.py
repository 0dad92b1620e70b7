"""
Pebble, Let's Encrypt's ACME test server (Debian's ``pebble`` package,
which ``./dev`` installs), for Gourmet's ACME tests: a real ACME server on
loopback that validates http-01 challenges on a port the test gives it.

Every name resolves to 127.0.0.1 through ``pebble-challtestsrv``'s DNS.
Neither program can say which port it got for ``127.0.0.1:0`` (both log
":0"), so the ports are read from the kernel's socket tables, by the
process's own sockets: no port is picked by binding and closing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import List, Optional

from tests.processes import START_SECONDS
from tests.test_tls_listeners import Authority, _pem

PEBBLE = "/usr/bin/pebble"
CHALLTESTSRV = "/usr/bin/pebble-challtestsrv"

#: The intermediate CA that signs pebble's certificates: a new one, with
#: a random suffix, each time pebble starts.
PEBBLE_ISSUER = re.compile(r"Pebble Intermediate CA [0-9a-f]+")


def _socket_inodes(pid: int) -> List[str]:
    inodes = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.append(target[len("socket:[") : -1])
    return inodes


def bound_ports(pid: int, protocol: str) -> List[int]:
    """
    The ports the sockets of process ``pid`` are bound to: listening ones
    for ``"tcp"``, any for ``"udp"``.
    """
    inodes = set(_socket_inodes(pid))
    ports = []
    for line in Path(f"/proc/{pid}/net/{protocol}").read_text().splitlines()[1:]:
        fields = line.split()
        listening = protocol == "udp" or fields[3] == "0A"
        if fields[9] in inodes and listening:
            ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return sorted(ports)


def wait_ports(
    process: subprocess.Popen[bytes], protocol: str, count: int
) -> List[int]:
    """
    The ports ``process`` is bound to, once it has ``count`` of them.
    """
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, f"exited with {process.returncode}"
        ports = bound_ports(process.pid, protocol)
        if len(ports) >= count:
            return ports
        time.sleep(0.05)
    raise AssertionError(f"process {process.pid} bound no {protocol} port")


class Pebble:
    """
    Pebble with its DNS, validating http-01 on ``http_port`` of 127.0.0.1,
    issuing certificates valid for ``validity`` seconds.

    :ivar ca_file: the root that pebble's own HTTPS certificate is from
        (``[server.acme] ca_file``).
    """

    def __init__(self, directory: Path, http_port: int, validity: int) -> None:
        # Not a skip: ./dev installs pebble, and CI must not pass without it.
        assert os.path.exists(PEBBLE), "no pebble: ./dev setup installs it"
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.http_port = http_port
        self.validity = validity
        authority = Authority(directory)
        authority.issue("pebble", ["localhost"])
        self.ca_file = directory / "pebble-root.pem"
        self.ca_file.write_bytes(_pem(authority.root))
        self.log = directory / "pebble.log"
        self.dns = self._spawn(
            [
                CHALLTESTSRV,
                *("-dns01", "127.0.0.1:0", "-management", "127.0.0.1:0"),
                *("-http01", "", "-https01", "", "-tlsalpn01", ""),
                *("-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""),
            ],
            directory / "challtestsrv.log",
        )
        (self.dns_port,) = wait_ports(self.dns, "udp", 1)
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.port = 0
        self.start()

    def _spawn(self, command: List[str], log: Path) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            # Validate at once, take every nonce, and check every order's
            # challenges (no reuse of an earlier validation).
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_WFE_NONCEREJECT": "0",
            "PEBBLE_AUTHZREUSE": "0",
        }
        with log.open("ab") as output:
            return subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, env=env
            )

    def start(self) -> None:
        """
        Start pebble (again, after :meth:`stop`: a new CA, no accounts).
        """
        config = self.directory / "pebble.json"
        settings = {
            "listenAddress": "127.0.0.1:0",
            "managementListenAddress": "",
            "certificate": str(self.directory / "pebble.pem"),
            "privateKey": str(self.directory / "pebble.key"),
            "httpPort": self.http_port,
            "tlsPort": self.http_port,
            "certificateValidityPeriod": self.validity,
        }
        config.write_text(json.dumps({"pebble": settings}))
        self.process = self._spawn(
            [
                PEBBLE,
                *("-config", str(config)),
                *("-dnsserver", f"127.0.0.1:{self.dns_port}"),
            ],
            self.log,
        )
        (self.port,) = wait_ports(self.process, "tcp", 1)

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}/dir"

    def orders(self) -> int:
        """
        How many certificates pebble has issued since it was first started.
        """
        return self.log.read_text().count("Issued certificate serial")

    def stop(self) -> None:
        """
        Stop pebble (its DNS keeps running).
        """
        if self.process is not None:
            _end(self.process)
            self.process = None

    def close(self) -> None:
        self.stop()
        _end(self.dns)


def _end(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
