#!/usr/bin/env python3
"""
The codecs side by side, in one process: what relaymesh's wire layer and
its whole receive path cost per message with each JSON codec installed
(msgspec, the default; orjson; the standard library's json), beside a
minimal Twisted receiver that decodes every line with orjson.

    python bench/codecs.py              200 B and 4 KiB messages
    python bench/codecs.py --json out   also write the figures

No socket and no second process: the receive path is a connected
C{RelayProtocol} (a claudectl-style peer, in clear) fed 256 KiB chunks
of prepared lines, the reads a node makes; the minimal receiver is a
C{LineOnlyReceiver} fed the same 64 KiB chunks Twisted reads by default.
Each figure is the best of 5 runs of CPU time per message, and the ratios
compare figures of the same run. It complements bench/run.py, whose
figures include the sockets and the reactor.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Callable

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.protocols.basic import LineOnlyReceiver

from relaymesh import wire
from relaymesh.acceptor import RelayServerFactory
from relaymesh.handshake.proofs import LEGACY_FIELD, compute_proof
from relaymesh.mesh import Mesh
from relaymesh.testing import MemoryKeys

KEY = bytes(range(32))
PEER = "bench-source"
RUNS = 5


def lines_of(size: int, count: int) -> list[bytes]:
    """
    C{count} task_status lines of about C{size} bytes, with their newlines,
    as a claudectl peer would send them.
    """
    detail = "x" * max(0, size - 170)
    return [
        b'{"id":"msg_1764180000000_%d_0011223344556677","msg_type":"task_status",'
        b'"from_peer":"%s","timestamp":1764180000000,"payload":{"task_id":"bench",'
        b'"status":"running","detail":"%s"}}\n' % (i, PEER.encode(), detail.encode())
        for i in range(count)
    ]


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def best(run: Callable[[], float]) -> float:
    """
    The least CPU seconds of L{RUNS} calls of C{run}, which returns them.
    """
    return min(run() for _ in range(RUNS))


def per_message(function: Callable[[bytes], object], items: list) -> float:
    """
    CPU microseconds per call of C{function} on each of C{items}.
    """

    def run() -> float:
        start = time.process_time()
        for item in items:
            function(item)
        return time.process_time() - start

    return best(run) / len(items) * 1e6


def connected_receiver():
    """
    A relaymesh node's connection from a claudectl-style peer, its
    handshake done, and the list its subscriber counts into.
    """
    clock = Clock()
    clock.advance(1_764_180_000)
    keys = MemoryKeys({PEER: KEY}, identity="bench-sink")
    keys.metas[PEER] = {LEGACY_FIELD: True}
    mesh = Mesh("bench-sink", clock)
    received: list = []
    mesh.subscribe(lambda peer, message: received.append(None), "task_status")
    address = IPv4Address("TCP", "127.0.0.1", 40000)
    protocol = RelayServerFactory(mesh, keys).buildProtocol(address)
    transport = StringTransportWithDisconnection(peerAddress=address)
    transport.protocol = protocol
    protocol.makeConnection(transport)
    challenge = wire.decode(transport.value().split(b"\n")[0])
    proof = compute_proof(KEY, challenge.payload["nonce"])
    handshake = wire.RelayMessage("h", "handshake", PEER, 1, {"proof": proof})
    protocol.dataReceived(wire.encode(handshake) + b"\n")
    if mesh.connected_count() != 1:
        raise SystemExit("the bench peer did not authenticate")
    return protocol, received


def receive_path(lines: list[bytes]) -> float:
    """
    CPU microseconds per message of relaymesh's receive path, from bytes
    to a subscriber, with the codec in use.
    """
    data = chunks(b"".join(lines), 256 * 1024)

    def run() -> float:
        protocol, received = connected_receiver()
        start = time.process_time()
        for chunk in data:
            protocol.dataReceived(chunk)
        elapsed = time.process_time() - start
        if len(received) != len(lines):
            raise SystemExit(f"{len(received)} of {len(lines)} messages delivered")
        return elapsed

    return best(run) / len(lines) * 1e6


class MinimalReceiver(LineOnlyReceiver):
    """
    The least a Twisted receiver can do: split lines, decode each.
    """

    delimiter = b"\n"
    MAX_LENGTH = wire.MAX_LINE_BYTES

    def __init__(self, loads: Callable[[bytes], object]) -> None:
        self.loads = loads
        self.count = 0

    def lineReceived(self, line: bytes) -> None:
        self.loads(line)
        self.count += 1


def minimal_path(lines: list[bytes], loads: Callable[[bytes], object]) -> float:
    data = chunks(b"".join(lines), 64 * 1024)

    def run() -> float:
        receiver = MinimalReceiver(loads)
        receiver.makeConnection(StringTransportWithDisconnection())
        start = time.process_time()
        for chunk in data:
            receiver.dataReceived(chunk)
        elapsed = time.process_time() - start
        if receiver.count != len(lines):
            raise SystemExit(f"the minimal receiver took {receiver.count} of {len(lines)} lines")
        return elapsed

    return best(run) / len(lines) * 1e6


def use_codec(name: str) -> None:
    for attribute, value in wire._codec_functions(name).items():
        setattr(wire, attribute, value)


def measure(sizes: dict[int, int]) -> dict:
    if importlib.util.find_spec("orjson") is None:
        raise SystemExit("the baseline decodes with orjson: pip install orjson (or .[bench])")
    import orjson

    installed = [name for name in ("msgspec", "orjson", "json") if name == "json" or importlib.util.find_spec(name)]
    figures: dict = {"default": wire.CODEC, "codecs": installed, "sizes": {}}
    default = wire.CODEC
    for size, count in sizes.items():
        lines = lines_of(size, count)
        bare = [line[:-1] for line in lines]
        row: dict = {"minimal_orjson_us": minimal_path(lines, orjson.loads)}
        for name in installed:
            use_codec(name)
            message = wire.decode(bare[0])
            row[name] = {
                "decode_us": per_message(wire.decode, bare),
                "encode_us": per_message(wire.encode, [message] * len(bare)),
                "receive_us": receive_path(lines),
            }
        use_codec(default)
        figures["sizes"][size] = row
    return figures


def report(figures: dict) -> None:
    print(f"relaymesh's codec by default: {figures['default']}; CPU microseconds per message, best of {RUNS}")
    header = f"{'size':>6}  {'codec':8} {'decode':>7} {'encode':>7} {'receive':>8} {'minimal':>8} {'ratio':>6}"
    print(header)
    for size, row in figures["sizes"].items():
        base = row["minimal_orjson_us"]
        for name in figures["codecs"]:
            codec = row[name]
            print(
                f"{size:>6}  {name:8} {codec['decode_us']:7.2f} {codec['encode_us']:7.2f} "
                f"{codec['receive_us']:8.2f} {base:8.2f} {base / codec['receive_us']:6.2f}"
            )
    print("ratio: the minimal orjson receiver's CPU per message over relaymesh's (above 1: relaymesh is faster)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--count", type=int, default=100_000, help="messages of 200 B (a quarter as many of 4 KiB)")
    options = parser.parse_args()
    figures = measure({200: options.count, 4096: max(1, options.count // 4)})
    report(figures)
    if options.json:
        with open(options.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
