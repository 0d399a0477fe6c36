"""
L{ListenerService}: listening on a server endpoint as a service.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger

from relaymesh.address import format_address


class ListenerService(Service):
    """
    Listens on a server endpoint; fails C{startService} at once when the
    endpoint fails at once (a port in use), so C{twistd} reports it.

    @ivar port: The L{IListeningPort}, once listening.
    """

    log = Logger()

    def __init__(self, endpoint: IStreamServerEndpoint, factory: Any, identity: str) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.identity = identity
        self.port: IListeningPort | None = None
        self.listening: Deferred = Deferred()

    def startService(self) -> None:
        Service.startService(self)
        failures: list = []
        d = self.endpoint.listen(self.factory)
        d.addCallbacks(self._listening, failures.append)
        if failures:
            self.running = 0
            failures[0].raiseException()

    def _listening(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        self.log.info(
            "listening on {address} as {identity}",
            address=format_address(port.getHost()),
            identity=self.identity,
        )
        self.listening.callback(port)
        return port

    def stopService(self) -> Deferred | None:
        Service.stopService(self)
        if self.port is not None:
            port, self.port = self.port, None
            self.listening = Deferred()
            return port.stopListening()
        return None
