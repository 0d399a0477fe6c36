"""
A small synchronous client of a running node's control API, for the
command line.

It uses only the standard library. L{NodeClient.call} answers one request;
L{NodeClient.events} follows C{/api/events}. Which node: the URL given, else
C{$RELAYMESH_API}, else the URL a node running with the data directory wrote
to its C{api-url} file; with none of them no node of that data directory
serves an API (L{NoApiUrl}), and nothing is asked of whatever else may
answer on the default port. A node started with C{--api none} writes
C{none PID} there instead: while that process lives, L{NoControlApi} says
that it runs but cannot be reached; once it has exited, L{NoApiUrl}. The token is read from the token file
(C{DATA_DIR/api-token} unless another is given).

The token goes only to a node that holds it: before every request, on the
same connection, the node must prove that it knows the token for the
address the client dialled (L{relaymesh.control.proof}). Whatever else
answers at that URL (a stale C{api-url}, someone else on the default port,
something relaying to the real node) gets a nonce and nothing more, and the
request fails with L{NodeNotProven}.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit

from relaymesh.address import InvalidAddress, parse_port
from relaymesh.control.proof import PROOF_PATH, canonical_address, check_proof, new_nonce
from relaymesh.printable import printable

#: The environment variable naming the node's API URL.
API_ENV = "RELAYMESH_API"

#: The files a node keeps in its data directory (see relaymesh.control.api).
TOKEN_FILE = "api-token"
URL_FILE = "api-url"

#: What C{api-url} holds, followed by a process id, while a node runs
#: without a control API (C{--api none}); see
#: L{relaymesh.control.service.NoApiRecord}.
NO_API = "none"

#: Seconds to wait for an answer.
TIMEOUT = 10.0

#: Seconds an event stream may stay silent (the node sends a keepalive
#: every 15 s) before the node is taken to be gone.
STREAM_TIMEOUT = 60.0


def _bad_port(parts: Any) -> bool:
    """
    Whether a split URL names a port L{relaymesh.address.parse_port} refuses
    (C{urlsplit} takes some non-ASCII digits for digits, and raises for
    others only when its C{port} is read).
    """
    hostport = parts.netloc.rpartition("@")[2]
    if hostport.startswith("["):
        text = hostport.partition("]")[2].removeprefix(":")
    else:
        text = hostport.partition(":")[2]
    if not text:
        return False
    try:
        parse_port(text)
    except InvalidAddress:
        return True
    return False


class NodeNotRunning(Exception):
    """
    No node answers at the URL.

    @ivar url: The URL tried.
    """

    def __init__(self, url: str, reason: str = "") -> None:
        Exception.__init__(self, f"no node is running at {url}" + (f" ({reason})" if reason else ""))
        self.url = url


class NoApiUrl(NodeNotRunning):
    """
    No URL was named and the data directory has no C{api-url} file: no node
    serves a control API for it (a node started with C{--api none} may run,
    but cannot be reached).

    @ivar data_dir: The data directory.
    """

    def __init__(self, data_dir: str, reason: str = f"no {URL_FILE} file") -> None:
        Exception.__init__(self, f"no node running on {data_dir} ({reason})")
        self.url = None
        self.data_dir = data_dir


class NoControlApi(NodeNotRunning):
    """
    A node runs on the data directory without a control API (started with
    C{--api none}): its C{api-url} file holds C{none PID} instead of a URL,
    and that process is alive. It runs, but cannot be reached.

    @ivar data_dir: The data directory.
    @ivar pid: The node's process id.
    """

    def __init__(self, data_dir: str, pid: int) -> None:
        Exception.__init__(
            self,
            f"the node on {data_dir} (pid {pid}) runs without a control API (--api none): "
            "restart it with --api to use live commands",
        )
        self.url = None
        self.data_dir = data_dir
        self.pid = pid


class NodeNotProven(NodeNotRunning):
    """
    What answers at the URL did not prove that it holds the API token, so
    the token was not sent: it is not the node of the token's data
    directory (or it runs with another token).

    @ivar reason: Why the proof failed, one line.
    """

    def __init__(self, url: str, reason: str) -> None:
        Exception.__init__(
            self, f"{url} did not prove that it holds the API token ({reason}); the token was not sent"
        )
        self.url = url
        self.reason = reason


#: Bytes of the answer to a proof request read at most.
MAX_PROOF_ANSWER = 4096


class ApiRequestError(Exception):
    """
    The node refused a request.

    @ivar status: The HTTP status.
    @ivar message: The node's one-line reason.
    """

    def __init__(self, status: int, message: str) -> None:
        Exception.__init__(self, message)
        self.status = status
        self.message = message


class TokenMissing(Exception):
    """
    There is no token file; the message says where it was looked for.
    """


def _read_first_line(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read(4096).decode("utf-8", "replace").strip() or None
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def resolve_url(data_dir: str, api: str | None = None) -> str:
    """
    The API URL to use (see the module's docstring for the order).

    @raise NoApiUrl: if none is named and the data directory has no
        C{api-url} file.
    """
    for candidate in (api, os.environ.get(API_ENV)):
        if candidate:
            return candidate.rstrip("/")
    recorded = _read_first_line(os.path.join(data_dir, URL_FILE))
    if not recorded:
        raise NoApiUrl(data_dir)
    words = recorded.split()
    if words[0] != NO_API:
        return recorded.rstrip("/")
    pid = _pid(words[1]) if len(words) == 2 else None
    if pid is None:
        raise NoApiUrl(data_dir, f"its {URL_FILE} file names neither a URL nor a node's process id")
    if not _alive(pid):
        raise NoApiUrl(data_dir, f"the node without a control API its {URL_FILE} file names, pid {pid}, has exited")
    raise NoControlApi(data_dir, pid)


def node_without_api(data_dir: str, api: str | None = None) -> int | None:
    """
    The process id of the node running on the data directory without a
    control API, if one does and no other API is named (C{api},
    C{$RELAYMESH_API}); else L{None}.
    """
    try:
        resolve_url(data_dir, api)
    except NoControlApi as e:
        return e.pid
    except NoApiUrl:
        pass
    return None


def _pid(text: str) -> int | None:
    if not (text.isascii() and text.isdigit()) or len(text) > 10:
        return None
    pid = int(text)
    return pid if pid > 0 else None


def _alive(pid: int) -> bool:
    """
    Whether a process with that id runs (maybe another user's).
    """
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True
    except (ProcessLookupError, OverflowError, OSError):
        return False
    return True


def read_token(path: str) -> str:
    """
    The token in a token file.

    @raise TokenMissing: if there is no such file or it is empty.
    @raise OSError: if it cannot be read.
    """
    token = _read_first_line(path)
    if token is None:
        raise TokenMissing(f"no API token at {path}")
    return token


class NodeClient:
    """
    Talks to one node's API.

    @ivar url: The API's base URL, e.g. C{http://127.0.0.1:9849}.
    @ivar status: The node's C{/api/status} answer, once a command that
        checked it keeps it (L{relaymesh.join.local_node}).
    """

    status: dict[str, Any]

    def __init__(self, url: str, token: str, timeout: float = TIMEOUT) -> None:
        """
        @raise ValueError: if the URL is not an http or https URL.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--api: {url!r} is not an http:// URL")
        if _bad_port(parts):
            raise ValueError(f"--api: {url!r} has an invalid port (ASCII digits, 1 to 65535)")
        self.url = url.rstrip("/")
        self._parts = parts
        self._token = token
        self._timeout = timeout

    @property
    def token(self) -> str:
        """
        The API token the client sends (once the node proved it holds it).
        """
        return self._token

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self._parts.scheme == "https" else http.client.HTTPConnection
        return kind(self._parts.hostname, self._parts.port, timeout=timeout)

    def _base_path(self) -> str:
        return self._parts.path.rstrip("/")

    def _open(self, timeout: float) -> http.client.HTTPConnection:
        """
        Connect, and have the node prove on that connection that it holds
        the token; the connection never reconnects by itself afterwards, so
        the token goes only where the proof came from.

        @raise NodeNotRunning: if nothing answers.
        @raise NodeNotProven: if what answers cannot prove it.
        """
        connection = self._connection(timeout)
        nonce = new_nonce()
        try:
            connection.connect()
            dialled = connection.sock.getpeername()
            connection.request(
                "GET",
                f"{self._base_path()}{PROOF_PATH}?nonce={nonce.hex()}",
                headers={"Accept": "application/json"},
            )
            response = connection.getresponse()
            raw = response.read(MAX_PROOF_ANSWER)
        except (ConnectionRefusedError, socket.gaierror) as e:
            connection.close()
            raise NodeNotRunning(self.url) from e
        except (OSError, http.client.HTTPException) as e:
            connection.close()
            raise NodeNotRunning(self.url, _reason(e)) from e
        problem = _proof_problem(self._token, nonce, canonical_address(dialled[0], dialled[1]), response, raw)
        if problem is not None:
            connection.close()
            raise NodeNotProven(self.url, problem)
        connection.auto_open = 0
        return connection

    def _send(self, method: str, path: str, body: Any, timeout: float) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        connection = self._open(timeout)
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        try:
            connection.request(method, self._base_path() + path, body=data, headers=headers)
            return connection, connection.getresponse()
        except http.client.NotConnected as e:
            raise NodeNotRunning(self.url, "it closed the connection after its proof") from e
        except (OSError, http.client.HTTPException) as e:
            connection.close()
            raise NodeNotRunning(self.url, _reason(e)) from e

    def call(self, method: str, path: str, body: Any = None, wait: float = 0.0) -> Any:
        """
        Make one request; return the JSON answer.

        @param wait: seconds the node may take on purpose before it answers
            (C{POST /api/send}'s C{"wait"}), on top of the usual timeout.
        @raise NodeNotRunning: if nothing answers.
        @raise ApiRequestError: if the node refuses the request.
        """
        connection, response = self._send(method, path, body, self._timeout + wait)
        try:
            raw = response.read()
        except (OSError, http.client.HTTPException) as e:
            raise NodeNotRunning(self.url, _reason(e)) from e
        finally:
            connection.close()
        try:
            value = json.loads(raw) if raw else None
        except ValueError:
            value = None
        if response.status >= 400:
            message = value.get("error") if isinstance(value, dict) else None
            raise ApiRequestError(response.status, message or f"HTTP {response.status} {response.reason}")
        if value is None:
            raise ApiRequestError(response.status, f"{self.url} did not answer JSON: is it a relaymesh node?")
        return value

    def events(self, types: list[str] | None = None, timeout: float = STREAM_TIMEOUT) -> Iterator[dict]:
        """
        Follow C{/api/events}: yield each event's JSON object.

        The iterator ends when the node closes the stream.

        @raise NodeNotRunning: if nothing answers, or the stream goes silent.
        @raise ApiRequestError: if the node refuses the request.
        """
        path = "/api/events"
        if types:
            path += "?types=" + quote(",".join(types), safe=",")
        connection, response = self._send("GET", path, None, timeout)
        try:
            if response.status >= 400:
                raw = response.read()
                try:
                    message = json.loads(raw).get("error")
                except (ValueError, AttributeError):
                    message = None
                raise ApiRequestError(response.status, message or f"HTTP {response.status}")
            data: list[str] = []
            while True:
                try:
                    line = response.readline()
                except (OSError, http.client.HTTPException) as e:
                    raise NodeNotRunning(self.url, _reason(e)) from e
                if not line:
                    return
                text = line.decode("utf-8", "replace").rstrip("\r\n")
                if text.startswith("data:"):
                    data.append(text[5:].lstrip(" "))
                elif not text and data:
                    try:
                        yield json.loads("\n".join(data))
                    except ValueError:
                        pass
                    data = []
        finally:
            connection.close()


def _proof_problem(
    token: str, nonce: bytes, dialled: str, response: http.client.HTTPResponse, raw: bytes
) -> str | None:
    """
    Why an answer to a proof request proves nothing, or L{None} if it is the
    proof for the address dialled.
    """
    if response.status != 200:
        return f"it answered HTTP {response.status} to the proof request"
    if not response.isclosed():
        return "its answer to the proof request is too long"
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        return "its answer to the proof request is not a JSON object"
    offered, address = value.get("proof"), value.get("address")
    if check_proof(token, nonce, dialled, offered):
        return None
    if isinstance(address, str) and address != dialled and check_proof(token, nonce, address, offered):
        return (
            f"its proof is for {printable(address, 64)}, not {dialled}: something at {dialled} "
            "passes the connection on to the node"
        )
    return "its proof does not match the token"


def _reason(error: BaseException) -> str:
    if isinstance(error, socket.timeout):
        return "no answer in time"
    if isinstance(error, http.client.RemoteDisconnected):
        return "it closed the connection without answering; it may have too many connections open"
    return str(error) or type(error).__name__
