"""
The access log as an operator reads it: a file of JSON lines here (the
combined format to stdout is checked under twistd in test_twistd).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest_twisted

from tests.configs import access_log, config


@pytest_twisted.ensureDeferred
async def test_json_access_log_to_a_file(
    gourmet: Any, make_upstreams: Any, tmp_path: Path
) -> None:
    a, b = make_upstreams("a", "b")
    log_file = tmp_path / "access.log"
    text = config([a, b]) + access_log(log_file, "json")
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


@pytest_twisted.ensureDeferred
async def test_combined_access_log_line_by_line(
    gourmet: Any, make_upstreams: Any, tmp_path: Path
) -> None:
    (a,) = make_upstreams("a")
    log_file = tmp_path / "access.log"
    text = config([a]) + access_log(log_file)
    running = await gourmet(text)
    headers = {"User-Agent": 'say "hi"\\', "Referer": "http://example.test/"}
    request_ids = []
    for path in ("/one", "/status/404"):
        response = await running.get(path, headers=headers)
        await response.content()
        request_ids += response.headers.getRawHeaders("x-request-id")
    await running.service.stopService()  # flushes the log
    lines = log_file.read_text().splitlines()
    line = re.compile(
        r"127\.0\.0\.1 - - \[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d \+0000\] "
        r'"GET (\S+) HTTP/1\.1" (\d{3}) (\d+) "http://example\.test/" '
        r'"say \\"hi\\"\\\\" upstream=(\S+) upstream_status=(\d{3}) '
        r'request_time=(\d+\.\d{3}) request_id="([0-9a-f]{32})"'
    )
    matches = [line.fullmatch(text) for text in lines]
    assert all(matches), lines
    (one, missing) = [m.groups() for m in matches if m is not None]
    assert one[:2] == ("/one", "200") and int(one[2]) > 0
    assert missing[:2] == ("/status/404", "404")
    assert one[3] == missing[3] == a.address
    assert (one[4], missing[4]) == ("200", "404")
    assert float(one[5]) < 5
    # Each line ends with the ID its response carried.
    assert [one[6], missing[6]] == request_ids and one[6] != missing[6]
