"""
Why a connection to a peer failed, in words a user can act on.

L{connect_failure} names why TCP did not connect (refused, timed out, host
unknown). L{MismatchWatch}, mixed into
L{relaymesh.connection.RelayProtocol}, notices the two ways a dial and a
listener disagree about TLS, which would otherwise end in a silent
30-second handshake timeout or an opaque TLS error:

  - a plain dial to a C{tls:} listener: the connector waits for a challenge
    while the TLS server waits for a ClientHello, so nothing ever comes; after
    L{CHALLENGE_TIMEOUT} seconds of silence (or at once, if the first byte
    that comes is a TLS record's) the connector gives up and says to dial
    C{tls:}; the listener says the peer closed without a word;
  - a C{tls:} dial to a plain listener: the TLS handshake fails on the plain
    challenge line; the connector says to dial without C{tls:}. The plain
    acceptor sees a TLS record as the first byte and says so too.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import error
from twisted.python.failure import Failure

#: Seconds a plain connector waits for the first byte from the acceptor (a
#: relay acceptor sends its challenge as soon as TCP connects) before it
#: concludes that the listener waits for a TLS ClientHello.
CHALLENGE_TIMEOUT = 5.0

#: The first byte of a TLS record: a handshake (0x16) or an alert (0x15).
TLS_RECORD_BYTES = frozenset({0x15, 0x16})

#: L{MismatchWatch.mismatch}: the peer speaks TLS, this side dialled in clear.
TLS_EXPECTED = "tls-expected"
#: L{MismatchWatch.mismatch}: this side dialled TLS, the peer speaks in clear.
PLAIN_EXPECTED = "plain-expected"


def connect_failure(reason: Failure, host: str, where: str, timeout: float) -> str:
    """
    One line that says why TCP could not connect to C{where} (C{host:port}).
    """
    if reason.check(error.ConnectionRefusedError):
        return f"connection refused by {where}: nothing is listening there"
    if reason.check(error.TimeoutError, error.TCPTimedOutError):
        return f"no answer from {where} within {timeout:g} s (connection timed out)"
    if reason.check(error.DNSLookupError):
        return f"host {host} unknown (its name does not resolve)"
    if reason.check(error.NoRouteError):
        return f"no route to {where}"
    text = " ".join(reason.getErrorMessage().split()).rstrip(".")
    return f"cannot connect to {where}: {text or 'failed'}"


def _tls_error(reason: Failure | None) -> bool:
    try:
        from OpenSSL import SSL
    except ImportError:  # pragma: no cover - pyOpenSSL comes with TLS support
        return False
    return reason is not None and reason.check(SSL.Error) is not None


class MismatchWatch:
    """
    The TLS-mismatch detection of a relay connection.

    Mixed into L{relaymesh.connection.RelayProtocol}, which provides
    C{clock}, C{address}, C{encrypted}, C{direction}, C{handshake},
    C{traffic} and C{abort}.

    @ivar mismatch: L{TLS_EXPECTED} or L{PLAIN_EXPECTED} once detected, else
        C{None}.
    """

    clock: Any
    address: str
    encrypted: bool
    handshake: Any
    traffic: Any
    mismatch: str | None = None
    _challenge_watch: Any = None
    _heard: bool = False

    def abort(self, reason: str) -> None:
        raise NotImplementedError

    def _dialled_as(self, tls: bool) -> str:
        peer = getattr(self.handshake, "expected_peer", None) or "ID"
        return f"{'tls:' if tls else ''}{peer}@{self.address}"

    def _watchChallenge(self) -> None:
        """
        A plain connector just connected: expect the first byte within
        L{CHALLENGE_TIMEOUT} seconds.
        """
        if not self.encrypted:
            self._challenge_watch = self.clock.callLater(CHALLENGE_TIMEOUT, self._noChallenge)

    def _noChallenge(self) -> None:
        self._challenge_watch = None
        self.mismatch = TLS_EXPECTED
        self.abort(
            f"no challenge from {self.address} within {CHALLENGE_TIMEOUT:g} s: it may be a TLS "
            f"listener; dial it as {self._dialled_as(True)}"
        )

    def _stopWatching(self) -> None:
        watch, self._challenge_watch = self._challenge_watch, None
        if watch is not None and watch.active():
            watch.cancel()

    def _firstBytes(self, data: bytes, connector: bool) -> bool:
        """
        Look at the first bytes that came on a connection: a TLS record on a
        plain one means the two sides disagree about TLS.

        @return: whether the connection was dropped for it.
        """
        self._heard = True
        self._stopWatching()
        if self.encrypted or not data or data[0] not in TLS_RECORD_BYTES:
            return False
        if connector:
            self.mismatch = TLS_EXPECTED
            self.abort(
                f"{self.address} answered with TLS: it is a TLS listener; dial it as "
                f"{self._dialled_as(True)}"
            )
        else:
            self.mismatch = PLAIN_EXPECTED
            self.abort(
                f"a TLS handshake from {self.address} to this plain listener: the peer dialled "
                f"it with tls:, it should dial ID@HOST:PORT without tls:"
            )
        return True

    def _explainLoss(self, reason: Failure | None, connector: bool) -> str | None:
        """
        Why a connection that ran TLS from the first byte was lost before a
        line came: for a connector, its TLS handshake failed (the listener
        is plain); for a C{tls:} listener, the peer closed without a byte
        (a plain dial gives up waiting for the challenge).
        """
        if not self.encrypted or self.traffic.msgs_in:
            return None
        if not connector:
            if self._heard or _tls_error(reason):
                return None
            return (
                f"{self.address} closed the connection without a word: it may have dialled "
                f"this tls: listener in clear (it should dial tls:ID@HOST:PORT)"
            )
        if not _tls_error(reason):
            return None
        assert reason is not None
        self.mismatch = PLAIN_EXPECTED
        detail = " ".join(reason.getErrorMessage().split())[:120]
        return (
            f"the TLS handshake with {self.address} failed ({detail}): it may be a plain "
            f"listener; dial it as {self._dialled_as(False)} (without tls:)"
        )
