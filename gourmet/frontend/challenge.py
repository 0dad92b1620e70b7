"""
ACME's http-01 challenges answered by Gourmet itself (RFC 8555, section
8.3): while an order is pending, the ACME server asks
``http://NAME/.well-known/acme-challenge/TOKEN`` on port 80 and must get
the key authorization of that token.

Such a request is answered before routing, on every listener: never
proxied upstream, and never redirected by ``redirect_to_https`` (the
server would follow the redirect, but to a name whose certificate is the
very thing being asked for).  A token Gourmet has not been given is routed
as any other request, so an ACME client behind Gourmet keeps working for
its own names.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from twisted.web.resource import Resource

#: Where the ACME server looks for a token.
CHALLENGE_PATH = b"/.well-known/acme-challenge/"


class Challenges:
    """
    The http-01 challenges pending now: each token with its key
    authorization (the token, ``.``, the account key's thumbprint).

    Changed on the reactor's thread only: an order's tokens are added
    before the ACME server is told to look, and removed once it has.
    """

    def __init__(self) -> None:
        self._answers: Dict[bytes, bytes] = {}

    def add(self, token: str, key_authorization: str) -> None:
        self._answers[token.encode("ascii")] = key_authorization.encode("ascii")

    def remove(self, token: str) -> None:
        self._answers.pop(token.encode("ascii"), None)

    def resource_for(self, path: bytes) -> Optional[ChallengeAnswer]:
        """
        The answer to a request for ``path``, if it asks for a pending
        token; None for any other path.
        """
        if not (self._answers and path.startswith(CHALLENGE_PATH)):
            return None
        answer = self._answers.get(path[len(CHALLENGE_PATH) :])
        return None if answer is None else ChallengeAnswer(answer)


class ChallengeAnswer(Resource):
    """
    One token's key authorization, as plain text.
    """

    isLeaf = True

    def __init__(self, key_authorization: bytes) -> None:
        super().__init__()
        self.key_authorization = key_authorization

    def render(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/plain")
        request.setHeader(b"cache-control", b"no-store")
        return self.key_authorization
