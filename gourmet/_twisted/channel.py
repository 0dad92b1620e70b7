"""
The hooks of Twisted's :class:`HTTPChannel` that Gourmet's strict request
reading needs, under public names.

No public API lets a subclass of ``HTTPChannel`` choose the body's framing
itself, see the bytes of a line not yet ended, or answer a malformed
chunked body its own way.  This module overrides and reads the private
names that do (unchanged from Twisted 24.10 to 26.10, and checked at
start-up by :mod:`gourmet._twisted.check`), so that
:class:`gourmet.frontend.channel.GourmetChannel` uses none:

- ``_maybeChooseTransferDecoder`` (Twisted chooses the framing as headers
  arrive): overridden to choose nothing; :meth:`use_body_framing` sets
  ``_transferDecoder`` once the whole head has been checked.
- ``_ChunkedTransferDecoder`` (strict about sizes, extensions and CRLFs):
  subclassed to report each chunk's size before its data (its
  ``_dataReceived_CHUNK_LENGTH`` state) and check trailer lines (its
  ``_dataReceived_TRAILER`` state and ``_buffer``).
- ``_respondToBadRequestAndDisconnect``: routed to :meth:`malformed_body`.
- ``_handlingRequest`` and LineReceiver's ``_buffer``: read through
  :attr:`handling_request` and :attr:`unparsed`.
- ``_dataBuffer`` (what a client sent after the request being answered):
  taken by :meth:`take_buffered` when the connection switches protocols.
"""

from __future__ import annotations

from typing import Callable, Optional

from twisted.web.http import (
    HTTPChannel,
    _ChunkedTransferDecoder,
    _IdentityTransferDecoder,
)


class CheckedChunkedDecoder(_ChunkedTransferDecoder):
    """
    Twisted's chunked decoder, which also reports each chunk's size before
    its data, and has each trailer line checked: a request line swallowed
    as a trailer when the final CRLF is missing is refused, not dropped.

    :param chunk_size: told each chunk's size; may raise to refuse it.
    :param check_trailer: given each trailer line; may raise to refuse it.
    """

    def __init__(
        self,
        data: Callable[[bytes], None],
        finish: Callable[[bytes], None],
        chunk_size: Callable[[int], None],
        check_trailer: Callable[[bytes], object],
    ) -> None:
        super().__init__(data, finish)
        self._chunk_size = chunk_size
        self._check_trailer = check_trailer

    def _dataReceived_CHUNK_LENGTH(self) -> bool:
        done = super()._dataReceived_CHUNK_LENGTH()
        if done:
            self._chunk_size(self.length)
        return done

    def _dataReceived_TRAILER(self) -> bool:
        end = self._buffer.find(b"\r\n")
        if end > 0:
            self._check_trailer(bytes(self._buffer[:end]))
        return super()._dataReceived_TRAILER()


class HTTPChannelHooks(HTTPChannel):
    """
    An :class:`HTTPChannel` whose subclass decides the body's framing, can
    see what is buffered of an unfinished line, and answers a malformed
    chunked body itself.
    """

    def _maybeChooseTransferDecoder(self, header: bytes, data: bytes) -> bool:
        # The framing is chosen by use_body_framing, once the whole head has
        # been checked, by the subclass's rules rather than Twisted's.
        return True

    def use_body_framing(
        self,
        length: Optional[int],
        chunk_size: Callable[[int], None],
        check_trailer: Callable[[bytes], object],
    ) -> None:
        """
        Read the current request's body as ``length`` bytes, or as chunks
        when ``length`` is None (see :class:`CheckedChunkedDecoder`); a
        length of 0 means no body.
        """
        request = self.requests[-1]
        if length is None:
            self._transferDecoder = CheckedChunkedDecoder(
                request.handleContentChunk,
                self._finishRequestBody,
                chunk_size,
                check_trailer,
            )
        elif length:
            self._transferDecoder = _IdentityTransferDecoder(
                length, request.handleContentChunk, self._finishRequestBody
            )

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.malformed_body()

    def malformed_body(self) -> None:
        """
        Twisted found the body malformed (a bad chunk): by default, its own
        400 and close.
        """
        super()._respondToBadRequestAndDisconnect()

    @property
    def handling_request(self) -> bool:
        """
        Whether a request is being answered (its body bytes, then, are the
        next request's, kept aside by Twisted).
        """
        return bool(self._handlingRequest)

    def take_buffered(self) -> bytes:
        """
        Take what the client sent after the request being answered, which
        twisted.web keeps aside to read as the next request.
        """
        buffered = b"".join(self._dataBuffer)
        self._dataBuffer = []
        return buffered

    @property
    def unparsed(self) -> bytes:
        """
        The bytes received of a line not ended yet.
        """
        buffered: bytes = self._buffer
        return buffered
