"""
The reply mapping: what a command's outcome becomes on the wire.

Why its own module: the dispatcher (L{proto.dispatch.Dispatcher}) decides
when a request is answered; what the answer says is this module's one job
and is the same for a reply sent at once or when a Deferred fires:

  - L{successReply}: a command's result (bytes, a L{Result} with headers,
    a remembered L{EncodedResult}, or nothing) as C{OK} with its Sequence
    (PROTOCOL.md section 4);
  - L{failureReason}: a command's failure as the C{ERR} reason the client
    reads (section 5): its own C{CommandError}, the C{Timeout} (section 3),
    a drain's cancellation; C{None} for an unexpected failure, which the
    dispatcher logs in detail and answers in general words
    (C{Dispatcher._failureReply}).

Both are plain functions over L{proto.wire}'s encoders, bound once below
(no attribute hop per reply). C{proto.dispatch} re-exports them.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.python.failure import Failure

from proto import wire
from proto.commands.base import CommandError, EncodedResult, Result

__all__ = ["successReply", "failureReason"]

_encodeReply = wire.encodeReply
_encodeReplyTail = wire.encodeReplyTail


def successReply(result: bytes | Result | None, sequence: str) -> bytes:
    """The C{OK} reply for what a command returned (bytes: the body)."""
    if type(result) is bytes:
        return _encodeReply(sequence, result)
    if type(result) is EncodedResult:
        return _encodeReplyTail(sequence, result.tail)
    if result is None:
        return _encodeReply(sequence)
    assert isinstance(result, Result)
    return _encodeReply(sequence, result.body, result.headers)


def failureReason(failure: Failure, request: wire.Request) -> str | None:
    """
    The C{ERR} reason for a command's failure, or C{None}: an unexpected
    failure, which the client is told about in general words (see
    L{Dispatcher._failureReply}) and the log in detail.
    """
    error = failure.value
    if isinstance(error, CommandError):
        return error.reason
    if isinstance(error, defer.TimeoutError):
        return (
            f"Timeout: {request.command} did not finish within "
            f"{request.timeout:g} s and was cancelled"
        )
    if isinstance(error, defer.CancelledError):
        # Only a drain's grace cancels a command on an open connection.
        return (
            f"Cancelled: the connection is closing and {request.command} did "
            "not finish within the grace period"
        )
    return None
