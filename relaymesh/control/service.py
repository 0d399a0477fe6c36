"""
L{ApiService}: the control plane of a node, served on an endpoint.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorTime, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaymesh.address import format_address
from relaymesh.control.auth import load_token, token_is_private, token_path
from relaymesh.control.plane import ControlPlane
from relaymesh.control.requests import MAX_CONNECTIONS, REQUEST_DEADLINE
from relaymesh.control.site import make_site
from relaymesh.interfaces import INode
from relaymesh.keyfiles import KeyStoreError
from relaymesh.keystore import write_atomically
from relaymesh.listener import ListenerService
from relaymesh.startup import StartupError, as_startup_error

#: The file in the data directory where a running node writes its API's URL,
#: so that the command line finds the node of a data directory.
URL_FILE = "api-url"

#: What a node running without a control API (C{--api none}) writes to
#: L{URL_FILE} in place of a URL, followed by its process id: C{none 1234}.
NO_API = "none"


def no_api_record(pid: int) -> str:
    """
    The content of L{URL_FILE} of a node that runs without a control API.
    """
    return f"{NO_API} {pid}"


def api_url(address: object) -> str | None:
    """
    The URL a client on this host reaches a listening address at, or
    C{None} for an address that is not TCP.
    """
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None or port is None:
        return None
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


class ApiService(ListenerService):
    """
    Serves the control plane of a node on an endpoint.

    On start it loads (or makes) the token; once listening it writes the
    API's URL to the data directory's L{URL_FILE}, and removes it on stop.

    @ivar control: The L{ControlPlane}.
    @ivar data_dir: The node's data directory.
    @ivar token_file: Where the token is kept.
    @ivar url_file: Where the API's URL is written.
    @ivar fallback: Where to listen if the endpoint cannot, if anywhere.
    """

    log = Logger()

    def __init__(
        self,
        node: INode,
        endpoint: IStreamServerEndpoint,
        clock: IReactorTime,
        token_file: str | None = None,
        metrics_public: bool = False,
        fallback: IStreamServerEndpoint | None = None,
        hosts: Iterable[str] = (),
        max_connections: int = MAX_CONNECTIONS,
        request_deadline: float = REQUEST_DEADLINE,
        option: str = "--api",
    ) -> None:
        """
        @param node: The node (L{relaymesh.service.RelayService}).
        @param endpoint: Where to listen.
        @param clock: The node's clock.
        @param token_file: The token file; C{DATA_DIR/api-token} if C{None}.
        @param metrics_public: Whether /metrics needs no token.
        @param fallback: Where to listen if C{endpoint} cannot (its port is
            taken, by another node on the host, say), or C{None} to fail.
        @param hosts: Names (or C{NAME:PORT}s) the API answers to besides
            the loopback names and its own address.
        @param max_connections: Connections served at once at most.
        @param request_deadline: Seconds a client has to send a whole
            request.
        @param option: The option and value the endpoint comes from, for
            errors: C{--api tcp:9849:interface=127.0.0.1}.
        @raise relaymesh.control.hosts.InvalidHost: for a name in C{hosts}
            that does not parse.
        """
        self.fallback = fallback
        self.control = ControlPlane(
            node,
            clock,
            metrics_public=metrics_public,
            hosts=hosts,
            max_connections=max_connections,
            request_deadline=request_deadline,
        )
        self.data_dir = node.keystore.path
        self.token_file = token_file or token_path(self.data_dir)
        self._token_option = (
            f"--data-dir {self.data_dir}" if token_file is None else f"--api-token-file {token_file}"
        )
        self.url_file = os.path.join(self.data_dir, URL_FILE)
        self._url: str | None = None
        ListenerService.__init__(self, endpoint, make_site(self.control), node.mesh.identity, option)

    def startService(self) -> None:
        """
        Load (or make) the token, and listen: on the fallback endpoint if
        the endpoint cannot.

        @raise StartupError: if the token cannot be read or made, or no
            endpoint can listen.
        """
        try:
            self.control.token = load_token(self.token_file)
        except (OSError, KeyStoreError) as e:
            what = "" if isinstance(e, KeyStoreError) else f"cannot read or make {self.token_file}"
            raise as_startup_error(self._token_option, Failure(e), what) from e
        if not token_is_private(self.token_file):
            self.log.warn(
                "API token file {path} is readable by other users; run: chmod 600 {path}",
                path=self.token_file,
            )
        try:
            ListenerService.startService(self)
        except StartupError as e:
            if self.fallback is None or not isinstance(e.__cause__, CannotListenError):
                raise
            self.log.warn(
                "cannot serve the control API where asked ({error}); using a free port instead",
                error=e,
            )
            self.endpoint, self.fallback = self.fallback, None
            ListenerService.startService(self)

    def _listening(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        address = port.getHost()
        self.control.api_address = format_address(address)
        self.log.info(
            "control API, dashboard and metrics on {url}",
            url=api_url(address) or self.control.api_address,
        )
        self._url = api_url(address)
        if self._url is not None:
            try:
                write_atomically(self.url_file, self._url.encode("ascii") + b"\n")
            except OSError as e:
                self.log.warn("could not write {path}: {error}", path=self.url_file, error=e)
        self.listening.callback(port)
        return port

    def stopService(self) -> Deferred[None] | None:
        """
        End the event streams, remove the URL file (if it still names this
        API), and stop listening.
        """
        self.control.close_streams()
        if self._url is not None:
            _remove_if_holds(self.url_file, self._url)
            self._url = None
        return ListenerService.stopService(self)


class NoApiRecord(Service):
    """
    Records in a data directory that a node runs there without a control
    API (C{--api none}): on start it writes L{no_api_record} (C{none PID})
    to L{URL_FILE}, where a node with an API writes its URL, and on stop it
    removes the file if it still holds that. The command line can then say
    that the node runs but cannot be reached, rather than that none runs.

    @ivar url_file: Where the record is written.
    @ivar pid: The process id recorded.
    """

    log = Logger()

    def __init__(self, data_dir: str, pid: int | None = None) -> None:
        """
        @param data_dir: The node's data directory.
        @param pid: The node's process id; this process's by default.
        """
        self.url_file = os.path.join(data_dir, URL_FILE)
        self.pid = os.getpid() if pid is None else pid
        self._written: str | None = None

    def startService(self) -> None:
        """
        Write the record (a file that cannot be written is logged, and the
        node runs on).
        """
        Service.startService(self)
        record = no_api_record(self.pid)
        try:
            write_atomically(self.url_file, record.encode("ascii") + b"\n")
        except OSError as e:
            self.log.warn("could not write {path}: {error}", path=self.url_file, error=e)
            return
        self._written = record

    def stopService(self) -> None:
        """
        Remove the record, if the file still holds it.
        """
        Service.stopService(self)
        if self._written is not None:
            _remove_if_holds(self.url_file, self._written)
            self._written = None


def _remove_if_holds(path: str, text: str) -> None:
    try:
        with open(path, "rb") as f:
            if f.read(4096).decode("ascii", "replace").strip() != text:
                return
        os.unlink(path)
    except OSError:
        pass
