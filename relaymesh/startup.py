"""
Start-up failures: the one-line error that names the option and the cause,
and, under C{twistd}, a process that ends with a non-zero exit status
instead of staying up half-started.

A node that cannot listen where it is told to, serve its control API or
open its outbox does not start: L{relaymesh.service.RelayService} logs one
L{StartupError} line, stops whatever had started (ports that opened are
closed) and fails L{relaymesh.service.RelayService.whenStarted} with it.
L{exit_on_start_failure} then stops the reactor of C{twistd relaymesh}.
"""

from __future__ import annotations

import atexit
import errno
import os
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError, ReactorNotRunning
from twisted.python.failure import Failure

#: The exit status of a C{twistd relaymesh} whose node could not start.
EXIT_START_FAILED = 1


class StartupError(Exception):
    """
    Something the node needs at start-up failed.

    Its text is one line: the option (with its value) and the cause, as
    C{--listen tcp:9850: port 9850 is already in use (address already in
    use)}. The original exception, if any, is its C{__cause__}.

    @ivar option: The option and its value, as C{--listen tcp:9850}.
    @ivar reason: Why it failed.
    """

    def __init__(self, option: str, reason: str) -> None:
        Exception.__init__(self, option, reason)
        self.option = option
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.option}: {self.reason}"


def os_error_text(error: BaseException) -> str:
    """
    The cause an C{OSError} gives, in lower case and without its errno
    (C{not a directory}); another exception's text (its type's name when
    it has none). Always one line.
    """
    if isinstance(error, OSError) and error.strerror:
        text = error.strerror[:1].lower() + error.strerror[1:]
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def listen_failure_reason(error: BaseException) -> str:
    """
    Why a listener could not listen, for a person: C{port 9850 is already
    in use (address already in use)}.
    """
    if not isinstance(error, CannotListenError):
        return os_error_text(error)
    cause = error.socketError
    code = getattr(cause, "errno", None)
    detail = os_error_text(cause) if isinstance(cause, BaseException) else str(cause)
    interface = error.interface or "every interface"
    if code == errno.EADDRINUSE:
        return f"port {error.port} is already in use ({detail})"
    if code in (errno.EACCES, errno.EPERM):
        return f"port {error.port} on {interface} is not allowed for this user ({detail})"
    if code == errno.EADDRNOTAVAIL:
        return f"{interface} is not an address of this machine ({detail})"
    return f"cannot listen on port {error.port} of {interface} ({detail})"


def as_startup_error(option: str, failure: Failure, what: str = "") -> StartupError:
    """
    The L{StartupError} for a failure of C{option}: the failure's own if it
    is one, else one that says C{what} failed and why.
    """
    value = failure.value
    assert value is not None  # a Failure always holds its exception
    if isinstance(value, StartupError):
        return value
    reason = os_error_text(value)
    error = StartupError(option, f"{what}: {reason}" if what else reason)
    error.__cause__ = value
    return error


def exit_on_start_failure(
    started: Deferred[None],
    reactor: Any,
    exit: Callable[[int], None] = os._exit,
    at_exit: Callable[[Callable[[], None]], Any] = atexit.register,
) -> list[int]:
    """
    For C{twistd relaymesh}: once C{started} fails (the node did not
    start; it has already logged why and closed what it had opened), stop
    the reactor, and end the process with L{EXIT_START_FAILED} once
    C{twistd} is done (its log closed, its PID file removed).

    C{twistd} has no way to set its exit status: it exits with 0 whenever
    its reactor stops. So a handler registered with C{atexit} now, before
    the process has registered others that should still run, ends the
    process with the status at interpreter exit, after flushing the
    standard streams.

    @param started: L{relaymesh.service.RelayService.whenStarted}.
    @param reactor: The reactor C{twistd} runs.
    @param exit: Ends the process with a status.
    @param at_exit: Registers a function to run at interpreter exit.
    @return: The exit status the process will have, once decided: empty
        until the node fails to start.
    """
    status: list[int] = []

    def at_interpreter_exit() -> None:
        if status:
            for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
                try:
                    if stream is not None:
                        stream.flush()
                except (OSError, ValueError):
                    pass
            exit(status[0])

    def failed(failure: Failure) -> None:
        status.append(EXIT_START_FAILED)

        def stop() -> None:
            try:
                reactor.stop()
            except ReactorNotRunning:  # already stopping
                pass

        reactor.callWhenRunning(stop)

    at_exit(at_interpreter_exit)
    started.addErrback(failed)
    return status
