"""
Raw-socket baselines and load generators: plain Python sockets, no Twisted,
no JSON on the hot path.

Baselines (the transport limit):

  - C{sink}: accept connections, count newlines;
  - C{echo}: answer every C{delegate_task} line with a prepared C{ack};
  - C{fanout-send}: accept C{--peers} connections, send each the same lines;
  - C{hmac}: the relay handshake with keys in memory (selectors loop);
  - C{hold}: accept connections, read and drop what they send;
  - C{middle}: connect to a sink, accept one source, copy its bytes over.

Load generators (used against relaymesh and the baselines alike; with
C{--handshake} each connection first authenticates as claudectl would):

  - C{source}: send C{--count} prepared lines over C{--conns} connections,
    as fast as the receiver takes them or paced at C{--rate} per second;
  - C{prober}: time C{--count} round trips of a probe and its answer;
  - C{fanout-recv}: C{--peers} connections, each counting C{--expect} lines;
  - C{hammer}: C{--conns} concurrent connectors doing handshakes in a loop
    for C{--duration} seconds: claudectl's, or with C{--tls} relaymesh's
    (the in-band upgrade to TLS, then the proof bound to both
    certificates; Python's C{ssl}, a certificate per process);
  - C{idle}: connect idle peers in steps (C{--steps 1,10,100,1000}), each
    sending C{--heartbeats} heartbeats, pausing after each step.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import shutil
import socket
import ssl
import struct
import sys
import tempfile
import time

import benchlib
from benchlib import PROBE_TYPE, SOURCE_ID, Stopwatch, report

LINGER_RESET = struct.pack("ii", 1, 0)  # close with RST: no TIME_WAIT pile-up


def deadline_passed(start: float, timeout: float) -> bool:
    return time.monotonic() - start > timeout


def accept_all(server: socket.socket, count: int) -> list[socket.socket]:
    peers = []
    while len(peers) < count:
        sock, _ = server.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peers.append(sock)
    return peers


def open_peers(options, count: int, prefix: str) -> list[tuple[socket.socket, bytearray]]:
    """
    C{count} connections to C{--port}, authenticated if C{--handshake}.
    """
    peers = []
    for i in range(count):
        sock = benchlib.connect(options.port)
        rest = bytearray()
        if options.handshake:
            rest = benchlib.raw_handshake(sock, f"{prefix}-{i}")
        peers.append((sock, rest))
    return peers


# -- baselines ---------------------------------------------------------------


def sink(options) -> None:
    server = benchlib.listener()
    report("READY", port=server.getsockname()[1])
    peers = accept_all(server, options.conns)
    sel = selectors.DefaultSelector()
    for sock in peers:
        sel.register(sock, selectors.EVENT_READ)
    buffer = bytearray(1 << 20)
    seen = 0
    watch = Stopwatch()
    while seen < options.expect:
        for key, _ in sel.select(timeout=options.timeout):
            n = key.fileobj.recv_into(buffer)
            if not n:
                sel.unregister(key.fileobj)
                continue
            if not seen:
                watch.start()
            seen += buffer.count(b"\n", 0, n)
        if not sel.get_map():
            break
    watch.stop()
    report("RESULT", **watch.fields(seen))


def echo(options) -> None:
    server = benchlib.listener()
    server.setblocking(False)
    report("READY", port=server.getsockname()[1])
    ack = (
        b'{"id":"msg_1_0_echo","msg_type":"ack","from_peer":"bench-sink",'
        b'"timestamp":1,"payload":{"ack_id":"x"}}\n'
    )
    marker = b'"msg_type":"' + PROBE_TYPE.encode() + b'"'
    sel = selectors.DefaultSelector()
    sel.register(server, selectors.EVENT_READ)
    tails: dict = {}
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            if sock is server:
                peer, _ = server.accept()
                peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sel.register(peer, selectors.EVENT_READ)
                tails[peer] = b""
                continue
            data = sock.recv(1 << 20)
            if not data:
                sel.unregister(sock)
                sock.close()
                continue
            # a marker may straddle two reads: keep fewer bytes than one
            text = tails[sock] + data
            probes = text.count(marker)
            tails[sock] = text[-len(marker) + 1 :]
            if probes:
                sock.sendall(ack * probes)


def fanout_send(options) -> None:
    server = benchlib.listener()
    report("READY", port=server.getsockname()[1])
    peers = accept_all(server, options.peers)
    block = benchlib.encoded_lines(options.count, options.size, benchlib.SINK_ID)
    watch = Stopwatch()
    watch.start()
    view = memoryview(block)
    for offset in range(0, len(block), 65536):
        piece = view[offset : offset + 65536]
        for sock in peers:
            sock.sendall(piece)
    watch.stop()
    report("RESULT", **watch.fields(options.count))
    time.sleep(options.linger)


def hmac_acceptor(options) -> None:
    server = benchlib.listener()
    server.setblocking(False)
    report("READY", port=server.getsockname()[1])
    sel = selectors.DefaultSelector()
    sel.register(server, selectors.EVENT_READ)
    state: dict = {}
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            if sock is server:
                try:
                    peer, _ = server.accept()
                except BlockingIOError:
                    continue
                nonce = os.urandom(32).hex()
                peer.send(
                    b'{"id":"msg_1_0_hs","msg_type":"challenge","from_peer":"","timestamp":1,'
                    b'"payload":{"nonce":"%s"}}\n' % nonce.encode()
                )
                state[peer] = [nonce, b""]
                sel.register(peer, selectors.EVENT_READ)
                continue
            try:
                data = sock.recv(65536)
            except ConnectionError:
                data = b""
            entry = state.get(sock)
            if not data or entry is None:
                sel.unregister(sock)
                state.pop(sock, None)
                sock.close()
                continue
            entry[1] += data
            if entry[0] and b"\n" in entry[1]:
                line = entry[1].split(b"\n", 1)[0]
                at = line.find(b'"proof":"') + 9
                ok = benchlib.proof(benchlib.KEY, entry[0]).encode() == line[at : at + 64]
                entry[0] = None
                sock.send(
                    b'{"id":"msg_1_1_hs","msg_type":"handshake_ack","from_peer":"bench-sink",'
                    b'"timestamp":1,"payload":{"status":"%s"}}\n' % (b"ok" if ok else b"denied")
                )


def hold(options) -> None:
    server = benchlib.listener()
    server.setblocking(False)
    report("READY", port=server.getsockname()[1])
    sel = selectors.DefaultSelector()
    sel.register(server, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            if sock is server:
                try:
                    peer, _ = server.accept()
                except BlockingIOError:
                    continue
                sel.register(peer, selectors.EVENT_READ)
                continue
            if not sock.recv(1 << 16):
                sel.unregister(sock)
                sock.close()


def middle(options) -> None:
    sink = benchlib.connect(options.port)
    server = benchlib.listener()
    report("READY", port=server.getsockname()[1])
    source, _ = server.accept()
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    while True:
        n = source.recv_into(buffer)
        if not n:
            break
        sink.sendall(view[:n])


# -- load generators ---------------------------------------------------------


def source(options) -> None:
    conns = options.conns
    peers = open_peers(options, conns, "bench-src")
    share = [options.count // conns + (1 if i < options.count % conns else 0) for i in range(conns)]
    blocks = [
        memoryview(benchlib.encoded_lines(n, options.size, f"bench-src-{i}" if options.handshake else SOURCE_ID))
        for i, n in enumerate(share)
    ]
    report("READY")
    watch = Stopwatch()
    watch.start()
    if options.rate:
        paced(options, peers[0][0], blocks[0])
    else:
        chunk = 1 << 18 if conns == 1 else max(4096, (1 << 20) // conns)
        offsets = [0] * conns
        active = list(range(conns))
        while active:
            for i in list(active):
                block = blocks[i]
                piece = block[offsets[i] : offsets[i] + chunk]
                peers[i][0].sendall(piece)
                offsets[i] += len(piece)
                if offsets[i] >= len(block):
                    active.remove(i)
    watch.stop()
    report("RESULT", **watch.fields(options.count))
    time.sleep(options.linger)


def paced(options, sock: socket.socket, block: memoryview) -> None:
    """
    Send lines at C{--rate} per second until C{--duration} passes, cycling
    through the prepared block (its ids repeat only after many thousands
    of lines, far outside any duplicate window).
    """
    data = bytes(block)
    line_size = data.index(b"\n") + 1
    per_tick = max(1, int(options.rate / 1000))
    start = time.perf_counter()
    sent = 0
    offset = 0
    while True:
        now = time.perf_counter() - start
        if now >= options.duration:
            break
        due = int(now * options.rate) - sent
        if due > 0:
            due = min(due, per_tick * 10)
            size = due * line_size
            if offset + size > len(data):
                offset = 0
            # whole lines only: prepared lines all have the same length
            sock.sendall(data[offset : offset + size])
            offset += size
            sent += due
        time.sleep(0.0005)


def prober(options) -> None:
    sock = benchlib.connect(options.port)
    block = benchlib.encoded_lines(options.count + options.warmup, options.size, msg_type=PROBE_TYPE)
    lines = block.split(b"\n")[:-1]
    report("READY")
    rtts = []
    for line in lines:
        start = time.perf_counter()
        sock.sendall(line + b"\n")
        while not sock.recv(65536).endswith(b"\n"):
            pass
        rtts.append(time.perf_counter() - start)
        time.sleep(options.gap)
    benchlib.report_round_trips(rtts, options.warmup)


def fanout_recv(options) -> None:
    peers = open_peers(options, options.peers, "bench-fan")
    report("READY")
    sel = selectors.DefaultSelector()
    counts = {}
    for sock, rest in peers:
        sel.register(sock, selectors.EVENT_READ)
        counts[sock] = bytes(rest).count(b"\n")
    buffer = bytearray(1 << 20)
    total = options.expect * options.peers
    seen = sum(counts.values())
    watch = Stopwatch()
    started = False
    start = time.monotonic()
    while seen < total and not deadline_passed(start, options.timeout):
        for key, _ in sel.select(timeout=1.0):
            n = key.fileobj.recv_into(buffer)
            if not n:
                sel.unregister(key.fileobj)
                continue
            if not started:
                watch.start()
                started = True
            lines = buffer.count(b"\n", 0, n)
            counts[key.fileobj] += lines
            seen += lines
    watch.stop()
    report("RESULT", **watch.fields(seen), complete=seen >= total)


def hammer(options) -> None:
    if options.tls:
        tls_hammer(options)
        return
    address = ("127.0.0.1", options.port)
    sel = selectors.DefaultSelector()
    done = failed = 0
    report("READY")

    def start(i: int) -> None:
        sock = socket.socket()
        # each connector from its own loopback address: acceptors may limit
        # the handshakes in progress per address
        sock.bind((f"127.1.0.{i + 1}", 0))
        sock.setblocking(False)
        sock.connect_ex(address)
        sel.register(sock, selectors.EVENT_READ, [i, b"", False])

    def finish(sock: socket.socket) -> None:
        sel.unregister(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        sock.close()

    for i in range(options.conns):
        start(i)
    began = time.perf_counter()
    cpu0 = benchlib.cpu_seconds()
    while time.perf_counter() - began < options.duration:
        for key, _ in sel.select(timeout=0.5):
            sock = key.fileobj
            entry = key.data
            try:
                data = sock.recv(4096)
            except ConnectionError:
                data = b""
            if not data:
                failed += 1
                finish(sock)
                start(entry[0])
                continue
            entry[1] += data
            if not entry[2]:
                end = entry[1].find(b"\n")
                if end < 0:
                    continue
                line = entry[1][:end]
                at = line.find(b'"nonce":"') + 9
                nonce = line[at : at + 64].decode()
                entry[1] = entry[1][end + 1 :]
                entry[2] = True
                sock.send(benchlib.handshake_line(f"bench-hs-{entry[0]}", nonce))
            if entry[2] and b"\n" in entry[1]:
                if b'"status":"ok"' in entry[1]:
                    done += 1
                else:
                    failed += 1
                finish(sock)
                start(entry[0])
    report_handshakes(done, failed, began, cpu0)


def report_handshakes(done: int, failed: int, began: float, cpu0: float) -> None:
    """
    Report a hammer's handshakes: how many, how many failed, and their rate
    and CPU since C{began} (a L{time.perf_counter}) and C{cpu0}.
    """
    elapsed = time.perf_counter() - began
    report(
        "RESULT",
        count=done,
        failed=failed,
        seconds=elapsed,
        rate=done / elapsed,
        cpu=benchlib.cpu_seconds() - cpu0,
    )


class TLSConnector:
    """
    One connector doing relaymesh's handshake over TLS, as a relaymesh node
    dialling another does it (docs/protocol.rst), step by step on a
    non-blocking socket: the challenge in clear, the request to upgrade and
    its ack, the TLS handshake (client certificate included), the challenge
    inside TLS, the labelled proof bound to both certificates, the ack. The
    acceptor's proof in the ack is not checked (neither is anything in the
    claudectl hammer): the acceptor's side is what is measured.
    """

    def __init__(self, sel, context: ssl.SSLContext, client_fp: str, i: int, address) -> None:
        self.sel = sel
        self.context = context
        self.client_fp = client_fp
        self.peer_id = f"{benchlib.TLS_HAMMER_PREFIX}{i}"
        self.i = i
        self.step = "challenge"
        self.buffer = b""
        self.tls: ssl.SSLSocket | None = None
        self.sock = socket.socket()
        # TLS sends its handshake in several small writes: Nagle's algorithm
        # would hold them back for the peer's delayed acks
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.bind((f"127.1.0.{i + 1}", 0))
        self.sock.setblocking(False)
        self.sock.connect_ex(address)
        sel.register(self.sock, selectors.EVENT_READ, self)

    def close(self) -> None:
        sock = self.tls or self.sock
        self.sel.unregister(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        sock.close()

    def ready(self) -> str | None:
        """
        The socket is ready: go as far as possible. C{"ok"} or C{"failed"}
        when the handshake is over, else L{None}.
        """
        try:
            if self.step == "tls":
                self.tls.do_handshake()
                self.step = "tls-challenge"
                self.sel.modify(self.tls, selectors.EVENT_READ, self)
            sock = self.tls or self.sock
            while True:
                data = sock.recv(65536)
                if not data:
                    return "failed"
                self.buffer += data
                if self.tls is None or not self.tls.pending():
                    break
        except ssl.SSLWantReadError:
            self.sel.modify(self.tls, selectors.EVENT_READ, self)
            if self.step == "tls":
                return None
        except ssl.SSLWantWriteError:
            self.sel.modify(self.tls, selectors.EVENT_WRITE, self)
            return None
        except BlockingIOError:
            return None
        except (ConnectionError, ssl.SSLError):
            return "failed"
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            outcome = self.line(json.loads(line))
            if outcome is not None:
                return outcome
        return None

    def line(self, message: dict) -> str | None:
        payload = message["payload"]
        if self.step == "challenge":
            if benchlib.CAP_STARTTLS not in payload.get("caps", ()):
                return "failed"
            self.sock.send(benchlib.message_line("handshake", self.peer_id, {"starttls": True, "version": "bench"}))
            self.step = "starttls"
        elif self.step == "starttls":
            if payload.get("status") != "starttls":
                return "failed"
            self.sel.unregister(self.sock)
            self.tls = self.context.wrap_socket(self.sock, do_handshake_on_connect=False)
            self.sel.register(self.tls, selectors.EVENT_WRITE, self)
            self.step = "tls"
        elif self.step == "tls-challenge":
            nonce = os.urandom(32).hex()
            server_fp = benchlib.fingerprint(self.tls.getpeercert(binary_form=True))
            proof = benchlib.labelled_proof(
                benchlib.KEY,
                benchlib.CONNECTOR_LABEL,
                payload["nonce"],
                nonce,
                self.peer_id,
                payload["peer"],
                server_fp,
                self.client_fp,
            )
            answer = {"proof": proof, "version": "bench", "nonce": nonce, "caps": [benchlib.CAP_MUTUAL_AUTH]}
            self.tls.send(benchlib.message_line("handshake", self.peer_id, answer))
            self.step = "ack"
        else:
            return "ok" if payload.get("status") == "ok" else "failed"
        return None


def tls_hammer(options) -> None:
    directory = tempfile.mkdtemp(prefix="relaymesh-bench-")
    try:
        cert, key, client_fp = benchlib.self_signed("bench-hammer", directory)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.load_cert_chain(cert, key)
    finally:
        shutil.rmtree(directory, True)
    address = ("127.0.0.1", options.port)
    sel = selectors.DefaultSelector()
    done = failed = 0
    report("READY")
    for i in range(options.conns):
        TLSConnector(sel, context, client_fp, i, address)
    began = time.perf_counter()
    cpu0 = benchlib.cpu_seconds()
    while time.perf_counter() - began < options.duration:
        for key, _ in sel.select(timeout=0.5):
            connector = key.data
            outcome = connector.ready()
            if outcome is None:
                continue
            if outcome == "ok":
                done += 1
            else:
                failed += 1
            connector.close()
            TLSConnector(sel, context, client_fp, connector.i, address)
    report_handshakes(done, failed, began, cpu0)


def idle(options) -> None:
    steps = [int(s) for s in options.steps.split(",")]
    peers: list[socket.socket] = []
    report("READY")
    for target in steps:
        while len(peers) < target:
            i = len(peers)
            sock = benchlib.connect(options.port)
            if options.handshake:
                benchlib.raw_handshake(sock, f"bench-idle-{i}")
            peer_id = f"bench-idle-{i}"
            beats = benchlib.encoded_lines(
                options.heartbeats, 0, peer_id, "heartbeat", payload={}
            )
            sock.sendall(beats)
            peers.append(sock)
        report("STEP", peers=len(peers))
        if not sys.stdin.readline():
            break
    for sock in peers:
        sock.close()


ROLES = {
    "sink": sink,
    "echo": echo,
    "fanout-send": fanout_send,
    "hmac": hmac_acceptor,
    "hold": hold,
    "middle": middle,
    "source": source,
    "prober": prober,
    "fanout-recv": fanout_recv,
    "hammer": hammer,
    "idle": idle,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("role", choices=sorted(ROLES))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--handshake", action="store_true")
    parser.add_argument("--tls", action="store_true", help="hammer: relaymesh's handshake over TLS")
    parser.add_argument("--expect", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--conns", type=int, default=1)
    parser.add_argument("--peers", type=int, default=1)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--gap", type=float, default=0.001)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--steps", default="1,10,100,1000")
    parser.add_argument("--heartbeats", type=int, default=1000)
    parser.add_argument("--linger", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=120.0)
    options = parser.parse_args()
    benchlib.raise_fd_limit()
    ROLES[options.role](options)


if __name__ == "__main__":
    main()
