"""
Gourmet's own error responses (no route, bad gateway, no server, timeout,
body too large, bad request): JSON when the client prefers it, a small
self-contained HTML page otherwise.
"""

from __future__ import annotations

import json
from html import escape
from http import HTTPStatus
from importlib import resources
from string import Template
from typing import Dict, Optional, Tuple

from twisted.web.iweb import IRequest

from gourmet.http.request_id import REQUEST_ID

_JSON = "application/json"
_HTML = "text/html"


def _media_ranges(accept: str) -> Dict[str, float]:
    """
    Parse an Accept header into ``{media range: q}``; a malformed q counts
    as 0 (RFC 9110 says it must be ignored, and not choosing is safest).
    """
    ranges: Dict[str, float] = {}
    for item in accept.split(","):
        media, _, params = item.partition(";")
        media = media.strip().lower()
        if not media:
            continue
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(max(float(value.strip()), 0.0), 1.0)
                except ValueError:
                    q = 0.0
        ranges[media] = max(q, ranges.get(media, 0.0))
    return ranges


def _quality(ranges: Dict[str, float], media: str) -> float:
    # The most specific range that matches decides (RFC 9110, 12.5.1).
    major = media.split("/")[0]
    for candidate in (media, f"{major}/*", "*/*"):
        if candidate in ranges:
            return ranges[candidate]
    return 0.0


def prefers_json(accept: Optional[str]) -> bool:
    """
    Whether a client sending this Accept header would rather have JSON than
    HTML.  Ties (``*/*``, no header) go to HTML, for browsers.
    """
    if not accept:
        return False
    ranges = _media_ranges(accept)
    return _quality(ranges, _JSON) > _quality(ranges, _HTML)


def error_document(
    status: int, description: str, request_id: Optional[str] = None
) -> Dict[str, object]:
    """
    The JSON body of an error: ``{"status", "status_text", "description"}``,
    and ``"request_id"`` for a request that has one.
    """
    document: Dict[str, object] = {
        "status": status,
        "status_text": HTTPStatus(status).phrase,
        "description": description,
    }
    if request_id is not None:
        document["request_id"] = request_id
    return document


class ErrorPages:
    """
    Renders error responses.

    :param template: HTML with ``$status``, ``$status_text``,
        ``$description`` and ``$request_id`` placeholders
        (:class:`string.Template`, so that CSS braces need no escaping);
        Gourmet's own page when None.
    """

    def __init__(self, template: Optional[str] = None) -> None:
        if template is None:
            template = (
                resources.files("gourmet.frontend")
                .joinpath("templates/error.html")
                .read_text("utf-8")
            )
        self._template = Template(template)

    def body(
        self,
        status: int,
        description: str,
        accept: Optional[str],
        request_id: Optional[str] = None,
    ) -> Tuple[bytes, bytes]:
        """
        :param request_id: the request's ID, shown so that a user can
            quote it to whoever reads the logs; ``-`` on a page without one.
        :return: the content type and body for an error response.
        """
        if prefers_json(accept):
            document = error_document(status, description, request_id)
            return b"application/json", json.dumps(document).encode("utf-8")
        status_text = HTTPStatus(status).phrase
        page = self._template.safe_substitute(
            status=status,
            status_text=escape(status_text),
            description=escape(description),
            request_id=escape(request_id or "-"),
        )
        return b"text/html; charset=utf-8", page.encode("utf-8")

    def render(self, request: IRequest, status: int, description: str) -> None:
        """
        Answer ``request`` with an error and finish it, unless its client
        is already gone.
        """
        if getattr(request, "_disconnected", False):
            return
        # Gourmet's sites count their own answers, per listener.
        stats = getattr(getattr(request, "site", None), "client_stats", None)
        if stats is not None:
            stats.refusals[status] += 1
        accept = request.getHeader(b"accept")
        request_id: Optional[bytes] = getattr(request, "gourmet_request_id", None)
        content_type, body = self.body(
            status,
            description,
            accept.decode("latin-1") if accept else None,
            None if request_id is None else request_id.decode("latin-1"),
        )
        request.setResponseCode(status)
        headers = request.responseHeaders
        if request_id is not None:
            headers.setRawHeaders(REQUEST_ID, [request_id])
        headers.setRawHeaders(b"content-type", [content_type])
        headers.setRawHeaders(b"content-length", [b"%d" % len(body)])
        headers.setRawHeaders(b"cache-control", [b"no-store"])
        request.write(body)
        request.finish()
