"""
The access log as an operator reads it: a file of JSON lines here (the
combined format to stdout is checked under twistd in test_twistd).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest_twisted

from tests.configs import config


@pytest_twisted.ensureDeferred
async def test_json_access_log_to_a_file(
    gourmet: Any, make_upstreams: Any, tmp_path: Path
) -> None:
    a, b = make_upstreams("a", "b")
    log_file = tmp_path / "access.log"
    text = config([a, b]) + (
        f'[log]\naccess_log = "{log_file}"\naccess_log_format = "json"\n'
    )
    running = await gourmet(text)
    await a.stop()
    response = await running.get("/some/where?x=1", headers={"User-Agent": "probe"})
    assert response.code == 200
    await response.content()
    await running.service.stopService()  # flushes the log
    (line,) = log_file.read_text().splitlines()
    entry = json.loads(line)
    assert entry["remote_addr"] == "127.0.0.1"
    assert entry["request"] == "GET /some/where?x=1 HTTP/1.1"
    assert entry["status"] == 200
    assert entry["user_agent"] == "probe"
    # The first server refused the connection; the second answered.
    assert entry["upstream"] == f"{a.address},{b.address}"
    assert entry["upstream_status"] == "502,200"
    assert entry["body_bytes_sent"] > 0
    assert 0 <= entry["request_time"] < 5
