"""
L{ListenerService}: listening on a server endpoint as a service.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.application.service import IServiceCollection, Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaymesh.address import format_address
from relaymesh.startup import StartupError, listen_failure_reason


class ListenerService(Service):
    """
    Listens on a server endpoint; fails C{startService} at once, with a
    L{StartupError} that names L{option}, when the endpoint fails at once
    (a port in use).

    @ivar port: The C{IListeningPort}, once listening.
    @ivar option: The option and value this listener comes from, for
        errors: C{--listen tcp:9847}.
    """

    log = Logger()

    if TYPE_CHECKING:
        # Service's own, which Twisted leaves unannotated

        def setServiceParent(self, parent: IServiceCollection) -> None: ...

    def __init__(
        self, endpoint: IStreamServerEndpoint, factory: Any, identity: str, option: str = "--listen"
    ) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.identity = identity
        self.option = option
        self.port: IListeningPort | None = None
        self.listening: Deferred[IListeningPort] = Deferred()
        self._starting = False

    def startService(self) -> None:
        """
        Listen.

        @raise StartupError: if the endpoint cannot listen, with the
            endpoint's error as its C{__cause__}; the service is then not
            running.
        """
        Service.startService(self)
        failures: list[Failure] = []
        self._starting = True
        try:
            d = self.endpoint.listen(self.factory)
            d.addCallbacks(self._listening, self._not_listening, errbackArgs=(failures,))
        finally:
            self._starting = False
        if failures:
            self.running = 0
            error = self.startup_error(failures[0])
            if error is failures[0].value:
                raise error
            raise error from failures[0].value

    def startup_error(self, failure: Failure) -> StartupError:
        """
        The L{StartupError} for an endpoint that could not listen.
        """
        value = failure.value
        assert value is not None  # a Failure always holds its exception
        if isinstance(value, StartupError):
            return value
        return StartupError(self.option, listen_failure_reason(value))

    def _not_listening(self, failure: Failure, failures: list[Failure]) -> None:
        if self._starting:
            failures.append(failure)
            return
        # an endpoint that fails later than at once: nothing else waits for it
        self.running = 0
        self.log.error("{error}", error=str(self.startup_error(failure)))

    def _listening(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        self.log.info(
            "listening on {address} as {identity}",
            address=format_address(port.getHost()),
            identity=self.identity,
        )
        self.listening.callback(port)
        return port

    def stopService(self) -> Deferred[None] | None:
        Service.stopService(self)
        if self.port is not None:
            port, self.port = self.port, None
            self.listening = Deferred()
            return port.stopListening()
        return None
