"""
What the benchmark scripts share: messages, keys, the raw handshakes (the
claudectl one in clear, and the relaymesh one upgraded to TLS), the bench's
certificates, and how a worker process reports to C{run.py}.

A worker prints C{READY {json}} once it can be used (a listener gives its
port) and C{RESULT {json}} with its measurements; C{run.py} reads both from
its standard output. Workers that step through phases (the memory bench)
print C{STEP {json}} and wait for a line on their standard input.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import importlib.util
import json
import os
import resource
import socket
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Whether relaymesh is imported from this checkout because no other is
#: importable. An installed relaymesh (C{pip install .}), or one on
#: C{PYTHONPATH}, is the one measured: what users run. L{describe} says
#: which one it was.
FROM_CHECKOUT = importlib.util.find_spec("relaymesh") is None
if FROM_CHECKOUT:
    sys.path.insert(0, ROOT)

#: The environment variable that forces relaymesh's codec
#: (L{relaymesh.wire}); the codec comparison sets it per worker, every other
#: figure runs without it.
CODEC_VARIABLE = "RELAYMESH_CODEC"

#: The codecs relaymesh can be forced to, in the order the comparison shows
#: them.
CODECS = ("msgspec", "orjson", "json")

#: The JSON library of every baseline, whatever relaymesh uses.
BASELINE_CODEC = "orjson"

#: The key every benchmark peer shares with every other.
KEY = bytes(range(32))

#: The peer ids of the benchmark nodes.
SINK_ID = "bench-sink"
SOURCE_ID = "bench-source"

#: How the ids of C{raw.py}'s load generators that authenticate as a
#: claudectl peer does (one-way, in clear) begin: a relaymesh node accepts
#: that proof only for a key marked legacy, so the bench's relaymesh nodes
#: treat these peers' keys as legacy ones. (C{raw.py hammer --tls} does
#: relaymesh's handshake instead, as C{bench-tls-N}.)
CLAUDECTL_PEER_PREFIXES = ("bench-src-", "bench-fan-", "bench-idle-", "bench-hs-")
TLS_HAMMER_PREFIX = "bench-tls-"

#: relaymesh's handshake over TLS (docs/protocol.rst): the capability that
#: offers the in-band upgrade, and the labels of the two proofs.
CAP_STARTTLS = "starttls/1"
CAP_MUTUAL_AUTH = "mutual-auth/2"
CONNECTOR_LABEL = b"relaymesh/2 connector proof"
ACCEPTOR_LABEL = b"relaymesh/2 acceptor proof"

#: A plausible epoch-millisecond timestamp for pre-encoded messages.
EPOCH_MS = 1764180000000

#: The message type of the throughput and load traffic, and of the probes
#: the echo node answers (with an C{ack}).
DATA_TYPE = "task_status"
PROBE_TYPE = "delegate_task"


def codec(name: str = BASELINE_CODEC):
    """
    C{(name, loads, dumps)} of a JSON codec: orjson, the baselines' (always,
    whatever relaymesh uses), or C{"json"}, the standard library's.
    C{dumps} is compact and returns bytes, as on the wire.
    """
    if name == "orjson":
        import orjson

        return "orjson", orjson.loads, orjson.dumps
    encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
    return "json", json.loads, lambda value: encoder.encode(value).encode()


def missing_baseline_codec() -> str | None:
    """
    Why the baselines cannot run, in one line, or L{None} if they can.
    """
    if importlib.util.find_spec(BASELINE_CODEC) is None:
        return (
            f"the baselines decode with {BASELINE_CODEC}, which is not installed: "
            "pip install '.[bench]' (or pip install orjson)"
        )
    return None


def codec_importable(name: str) -> bool:
    """
    Whether relaymesh could be forced to codec C{name}: its library imports.
    """
    return name == "json" or importlib.util.find_spec(name) is not None


def describe() -> dict:
    """
    What is measured: Python, Twisted, OpenSSL, orjson (the baselines'),
    and relaymesh: its version, codec, and where it is imported from.
    """
    import platform

    from OpenSSL import SSL

    import relaymesh
    import twisted
    from relaymesh import wire
    from relaymesh._version import __version__

    where = os.path.dirname(os.path.abspath(relaymesh.__file__))
    if FROM_CHECKOUT:
        origin = "this checkout, as no relaymesh is installed"
    elif os.path.dirname(where) == ROOT:
        origin = "this checkout, found on sys.path (PYTHONPATH)"
    else:
        origin = "installed"
    library = {"json": None, "orjson": "orjson", "msgspec": "msgspec"}.get(wire.CODEC)
    codec_version = ""
    if library is not None:
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            codec_version = " " + version(library)
    baseline_version = ""
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        baseline_version = " " + version(BASELINE_CODEC)
    return {
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "twisted": twisted.__version__,
        "openssl": SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode(),
        "codec": wire.CODEC,
        "codec_version": codec_version.strip(),
        "baseline_codec": f"{BASELINE_CODEC}{baseline_version}",
        "version": __version__,
        "relaymesh_path": where,
        "relaymesh_origin": origin,
        "cores": os.cpu_count(),
    }


def cpu_seconds() -> float:
    """
    User plus system CPU seconds this process has used.
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_bytes(pid: int | str = "self") -> int:
    """
    The resident memory of a process, from C{/proc}.
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_ticks(pid: int) -> int:
    """
    Clock ticks of CPU a process has used (user + system), from C{/proc}.
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def report(kind: str, **fields) -> None:
    """
    Tell C{run.py} something: C{READY}, C{STEP} or C{RESULT}.
    """
    sys.stdout.write(f"{kind} {json.dumps(fields)}\n")
    sys.stdout.flush()


def raise_fd_limit() -> None:
    """
    Allow as many open sockets as the hard limit does.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def payload_for(size: int, msg_type: str = DATA_TYPE, peer_id: str = SOURCE_ID) -> dict:
    """
    A payload that makes a whole message line (without its newline) about
    C{size} bytes long, as relaymesh would encode it.
    """
    _, _, dumps = codec("json")
    payload = {"task_id": "bench", "status": "running", "detail": ""}
    sample = dumps(
        {
            "id": f"msg_{EPOCH_MS}_100000_0123456789abcdef",
            "msg_type": msg_type,
            "from_peer": peer_id,
            "timestamp": EPOCH_MS,
            "payload": payload,
        }
    )
    payload["detail"] = "x" * max(0, size - len(sample))
    return payload


def encoded_lines(
    count: int,
    size: int,
    peer_id: str = SOURCE_ID,
    msg_type: str = DATA_TYPE,
    start: int = 0,
    payload: dict | None = None,
) -> bytes:
    """
    C{count} distinct message lines of about C{size} bytes, newlines
    included, as one block: what a sender would write, made in advance.
    Every line has the same length (the counter in the id has a fixed
    width), so a paced sender can cut the block at line boundaries.
    """
    _, _, dumps = codec("json")
    if payload is None:
        payload = payload_for(size, msg_type, peer_id)
    tag = os.urandom(8).hex()
    template = (
        b'{"id":"msg_%d_%%09d_%s","msg_type":"%s","from_peer":"%s","timestamp":%d,"payload":%s}\n'
        % (EPOCH_MS, tag.encode(), msg_type.encode(), peer_id.encode(), EPOCH_MS, dumps(payload))
    )
    return b"".join([template % i for i in range(start, start + count)])


def proof(key: bytes, nonce: str) -> str:
    """
    The relay handshake's proof: hex HMAC-SHA256 of the nonce.
    """
    return hmac.new(key, nonce.encode("ascii"), hashlib.sha256).hexdigest()


def labelled_proof(key: bytes, label: bytes, *parts: str) -> str:
    """
    One of relaymesh's proofs between nodes: hex HMAC-SHA256 of the label
    and the parts, each after a NUL byte. The parts are the acceptor's and
    the connector's nonces, the connector's and the acceptor's ids, and the
    server's and the client's certificate fingerprints.
    """
    message = label + b"".join(b"\x00" + part.encode("utf-8") for part in parts)
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def fingerprint(der: bytes) -> str:
    """
    A certificate's fingerprint as relaymesh writes it: C{sha256:} and the
    hex SHA-256 of its DER form.
    """
    return "sha256:" + hashlib.sha256(der).hexdigest()


def message_line(msg_type: str, peer_id: str, payload: dict) -> bytes:
    """
    One handshake message line, newline included.
    """
    return b'{"id":"msg_%d_0_bench","msg_type":"%s","from_peer":"%s","timestamp":%d,"payload":%s}\n' % (
        EPOCH_MS,
        msg_type.encode(),
        peer_id.encode(),
        EPOCH_MS,
        json.dumps(payload, separators=(",", ":")).encode(),
    )


def self_signed(common_name: str, directory: str) -> tuple[str, str, str]:
    """
    A certificate such as a relaymesh node makes for itself
    (L{relaymesh.tls.NodeCertificate.generate}), written as PEM files into
    C{directory}, for programs that take files (Python's C{ssl}).

    @return: the certificate's path, the key's path and the certificate's
        L{fingerprint}.
    """
    from OpenSSL import crypto

    from relaymesh.tls import NodeCertificate

    node = NodeCertificate.generate(common_name)
    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(crypto.dump_certificate(crypto.FILETYPE_PEM, node.certificate))
    with open(key_path, "wb") as f:
        f.write(crypto.dump_privatekey(crypto.FILETYPE_PEM, node.key))
    return cert_path, key_path, node.fingerprint


def handshake_line(peer_id: str, nonce: str, key: bytes = KEY) -> bytes:
    """
    The connector's C{handshake} line answering a challenge's nonce.
    """
    return b'{"id":"msg_%d_0_bench","msg_type":"handshake","from_peer":"%s","timestamp":%d,"payload":{"proof":"%s","version":"bench"}}\n' % (
        EPOCH_MS,
        peer_id.encode(),
        EPOCH_MS,
        proof(key, nonce).encode(),
    )


def nonce_of(challenge: bytes) -> str:
    """
    The nonce of a C{challenge} line.
    """
    return json.loads(challenge)["payload"]["nonce"]


def read_line(sock: socket.socket, buffer: bytearray) -> bytes:
    """
    One line from a blocking socket; what follows stays in C{buffer}.
    """
    while True:
        end = buffer.find(b"\n")
        if end >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            return line
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed during the handshake")
        buffer += data


def raw_handshake(sock: socket.socket, peer_id: str, key: bytes = KEY) -> bytearray:
    """
    Authenticate a blocking socket as C{peer_id}, as a claudectl connector
    does, written from the protocol description (no relaymesh code).

    @return: bytes that arrived after the ack.
    """
    buffer = bytearray()
    challenge = read_line(sock, buffer)
    sock.sendall(handshake_line(peer_id, nonce_of(challenge), key))
    ack = json.loads(read_line(sock, buffer))
    if ack.get("payload", {}).get("status") != "ok":
        raise ConnectionError(f"handshake refused: {ack!r}")
    return buffer


def connect(port: int, host: str = "127.0.0.1") -> socket.socket:
    """
    A blocking TCP connection with Nagle's algorithm off.
    """
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def listener(host: str = "127.0.0.1") -> socket.socket:
    """
    A listening socket on a free port.
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(4096)
    return sock


class Stopwatch:
    """
    When something started and ended, in wall and CPU seconds.
    """

    def __init__(self) -> None:
        self.wall0 = self.cpu0 = self.wall1 = self.cpu1 = 0.0

    def start(self) -> None:
        self.wall0 = time.perf_counter()
        self.cpu0 = cpu_seconds()

    def stop(self) -> None:
        self.wall1 = time.perf_counter()
        self.cpu1 = cpu_seconds()

    def fields(self, count: int) -> dict:
        """
        The figures for C{count} messages.
        """
        wall = max(self.wall1 - self.wall0, 1e-9)
        return {
            "count": count,
            "seconds": wall,
            "rate": count / wall,
            "cpu": self.cpu1 - self.cpu0,
            "cpu_per_million": (self.cpu1 - self.cpu0) / max(count, 1) * 1e6,
        }


def quiet_twisted_logs() -> None:
    """
    Send Twisted's warnings and errors to stderr and drop the rest, so that
    nothing is buffered waiting for an observer.
    """
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr),
        [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)],
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def percentile(values: list[float], fraction: float) -> float:
    """
    The value below which C{fraction} of C{values} lie (nearest rank).
    """
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, int(round(fraction * len(ordered) + 0.5)) - 1))
    return ordered[rank]


def report_round_trips(rtts: list[float], warmup: int) -> None:
    """
    Report the round trips measured after the first C{warmup}: count, p50,
    p99 and the longest.
    """
    measured = rtts[warmup:]
    report(
        "RESULT",
        count=len(measured),
        p50=percentile(measured, 0.50),
        p99=percentile(measured, 0.99),
        max=max(measured),
    )


def pump(protocols, send, count: int, batch: int, done, batched=contextlib.nullcontext) -> None:
    """
    Call C{send()} C{count} times, C{batch} calls at a time (each group
    inside C{batched()}, e.g. a relaymesh C{Mesh.batch}), waiting whenever
    one of the C{protocols}' send buffers is full; then C{done()}.
    """
    remaining = [count]

    def more(_=None) -> None:
        while remaining[0] > 0:
            for protocol in protocols:
                if not protocol.writable:
                    protocol.whenWritable().addCallback(more)
                    return
            n = min(batch, remaining[0])
            with batched():
                for _ in range(n):
                    send()
            remaining[0] -= n
        done()

    more()
