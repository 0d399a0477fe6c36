#!/usr/bin/env python3
"""
relaymesh's benchmark suite: every figure beside its baselines.

Each benchmark runs its nodes as separate processes on 127.0.0.1 (node.py
for relaymesh, minimal.py for the minimal-Twisted baseline, raw.py for the
raw-socket baseline and the load generators), several times, and reports
the median. The baselines are measured in the same run, so a change shows
as a ratio rather than as an absolute time that drifts with the machine.

    python bench/run.py             the whole suite (several minutes)
    python bench/run.py --quick     single-connection throughput only, for
                                    CI (about a minute); exits 1 if relaymesh
                                    falls below half the minimal-Twisted
                                    baseline, over TLS or in clear
    python bench/run.py --plot      also draw docs/performance.png
                                    (needs matplotlib: pip install .[bench])
    python bench/run.py --only throughput,memory --runs 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)

import benchlib  # noqa: E402

#: Gate for CI: relaymesh's single-connection throughput of 200-byte
#: messages over the minimal-Twisted baseline's, measured in the same run,
#: must be at least this, on each path in L{GATED}.
GATE_RATIO = 0.5

#: The comparisons the gate makes, like with like: relaymesh over TLS (the
#: default between relaymesh nodes) with the minimal-Twisted pair over TLS,
#: and relaymesh in clear (claudectl's handshake, the path to claudectl
#: peers) with the minimal-Twisted pair in clear: (path, relaymesh variant,
#: baseline variant).
GATED = (("over TLS", "relaymesh", "minimal-tls"), ("in clear", "relaymesh-plain", "minimal"))

#: The throughput variants C{--quick} measures, by message size: the gated
#: pairs, and the default path (over TLS) with 4 KiB messages.
QUICK_VARIANTS = {
    200: [variant for _, mine, base in GATED for variant in (mine, base)],
    4096: ["relaymesh", "minimal-tls"],
}


class BenchError(Exception):
    """
    A worker failed, timed out or reported an error.
    """


class Worker:
    """
    One benchmark process, spoken to through its standard streams.
    """

    def __init__(self, script: str, *args, timeout: float = 120.0) -> None:
        self.name = f"{script} {' '.join(str(a) for a in args[:1])}"
        self.timeout = timeout
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(BENCH, script), *map(str, args), "--timeout", str(timeout)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            bufsize=1,
        )
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    @property
    def pid(self) -> int:
        return self.process.pid

    def expect(self, kind: str, timeout: float | None = None) -> dict:
        """
        Wait for the worker's next C{kind} line and return its fields.
        """
        end = time.monotonic() + (timeout or self.timeout)
        while True:
            try:
                line = self._lines.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                raise BenchError(f"{self.name}: no {kind} within {timeout or self.timeout:g} s{self._tail()}")
            if line is None:
                raise BenchError(f"{self.name}: exited before {kind}{self._tail()}")
            head, _, body = line.partition(" ")
            if head == kind:
                fields = json.loads(body)
                if "error" in fields:
                    raise BenchError(f"{self.name}: {fields['error']}{self._tail()}")
                return fields

    def send(self, text: str) -> None:
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.stderr.close()

    def _tail(self) -> str:
        try:
            self.stderr.seek(0)
            text = self.stderr.read()[-2000:]
        except ValueError:
            return ""
        return f"\n--- stderr of {self.name} ---\n{text}" if text.strip() else ""


class Workers:
    """
    Starts workers and stops every one of them at the end of a C{with}.
    """

    def __enter__(self) -> Workers:
        self._all: list[Worker] = []
        return self

    def start(self, script: str, *args, timeout: float = 120.0) -> Worker:
        worker = Worker(script, *args, timeout=timeout)
        self._all.append(worker)
        return worker

    def __exit__(self, *exc_info) -> None:
        for worker in self._all:
            worker.stop()


def wait_idle(pid: int, quiet: float = 0.3, timeout: float = 60.0) -> None:
    """
    Wait until a process has used no CPU for C{quiet} seconds.
    """
    end = time.monotonic() + timeout
    last = benchlib.cpu_ticks(pid)
    calm_since = time.monotonic()
    while time.monotonic() < end:
        time.sleep(0.1)
        now = benchlib.cpu_ticks(pid)
        if now != last:
            last, calm_since = now, time.monotonic()
        elif time.monotonic() - calm_since >= quiet:
            return


def machine_busy(interval: float = 0.3) -> float:
    """
    The fraction of the machine's CPU time that was busy over C{interval}.
    """

    def snapshot() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        return ticks[3] + ticks[4], sum(ticks)

    idle0, total0 = snapshot()
    time.sleep(interval)
    idle1, total1 = snapshot()
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def wait_quiet(limit: float = 0.15, patience: float = 10.0) -> float:
    """
    Wait (up to C{patience} seconds) until other programs leave the machine
    nearly idle, so that they disturb a run as little as possible.

    @return: how busy the machine was when the run started.
    """
    end = time.monotonic() + patience
    busy = machine_busy()
    while busy > limit and time.monotonic() < end:
        busy = machine_busy()
    return busy


def median_of(runs: list[dict]) -> dict:
    """
    The median of each numeric field over several runs.
    """
    fields = {}
    for key in runs[0]:
        values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
        if values:
            fields[key] = statistics.median(values)
    fields["runs"] = len(runs)
    return fields


def line_bytes(size: int) -> int:
    """
    The length of one benchmark message line of about C{size} bytes,
    newline included.
    """
    return len(benchlib.encoded_lines(1, size))


# -- the benchmarks ----------------------------------------------------------
#
# Each *_once function runs one measurement once and returns its
# figures; measure() repeats it and takes medians.


def throughput_once(variant: str, size: int, count: int) -> dict:
    """
    One connection, C{count} messages of about C{size} bytes.

    Variants: C{relaymesh} (node to node: Mesh.send to a subscriber, over
    TLS, the default between relaymesh nodes), C{relaymesh-plain} (the same
    in clear, with claudectl's one-way handshake), C{relaymesh-rx} (a
    raw-socket sender with prepared lines, to relaymesh, in clear: what the
    receiver alone can take), C{minimal} (a minimal-Twisted sender to a
    minimal-Twisted receiver, in clear), C{minimal-tls} (the same over TLS),
    C{minimal-rx} (the raw-socket sender to the minimal-Twisted receiver)
    and C{raw} (socket to socket, counting newlines).
    """
    scripts = {
        "relaymesh": ("node.py", "node.py", []),
        "relaymesh-plain": ("node.py", "node.py", ["--plain"]),
        "relaymesh-rx": ("node.py", "raw.py", []),
        "minimal": ("minimal.py", "minimal.py", []),
        "minimal-tls": ("minimal.py", "minimal.py", ["--tls"]),
        "minimal-rx": ("minimal.py", "raw.py", []),
        "raw": ("raw.py", "raw.py", []),
    }
    sink_script, source_script, flags = scripts[variant]
    with Workers() as workers:
        sink = workers.start(sink_script, "sink", "--expect", count, *flags, timeout=60)
        port = sink.expect("READY")["port"]
        extra = ["--handshake"] if variant == "relaymesh-rx" else []
        source = workers.start(
            source_script, "source", "--port", port, "--count", count, "--size", size, *flags, *extra,
            timeout=60,
        )
        received = sink.expect("RESULT")
        sent = source.expect("RESULT") if source_script != "raw.py" else {}
    rate = received["rate"]
    return {
        "rate": rate,
        "mbps": rate * line_bytes(size) / 1e6,
        "rx_cpu_per_million": received["cpu_per_million"],
        "tx_cpu_per_million": sent.get("cpu_per_million", float("nan")),
    }


def fanout_once(variant: str, peers: int, count: int) -> dict:
    """
    One node sends C{count} messages to each of C{peers} connected peers
    (relaymesh: C{Mesh.broadcast}); the figure is messages delivered per
    second, all peers together.
    """
    script, role = {
        "relaymesh": ("node.py", "broadcast"),
        "minimal": ("minimal.py", "broadcast"),
        "raw": ("raw.py", "fanout-send"),
    }[variant]
    with Workers() as workers:
        sender = workers.start(script, role, "--peers", peers, "--count", count, "--size", 200)
        port = sender.expect("READY")["port"]
        extra = ["--handshake"] if variant == "relaymesh" else []
        receivers = workers.start(
            "raw.py", "fanout-recv", "--port", port, "--peers", peers, "--expect", count, *extra
        )
        got = receivers.expect("RESULT")
        sent = sender.expect("RESULT")
    if not got.get("complete"):
        raise BenchError(f"fan-out {variant}: only {got['count']} of {peers * count} delivered")
    return {"rate": got["rate"], "tx_cpu_per_million": sent["cpu"] / (peers * count) * 1e6}


def handshakes_once(variant: str, duration: float) -> dict:
    """
    Handshakes completed per second with 16 concurrent connectors that each
    connect, prove the key, read the ack and close, in a loop.

    Variants: C{relaymesh} (a relaymesh node's acceptor; the connectors do
    relaymesh's handshake: the in-band upgrade to TLS, then both proofs),
    C{relaymesh-plain} (the same acceptor; the connectors do claudectl's
    one-way handshake in clear, as legacy peers), C{relaymesh-service} and
    C{relaymesh-service-plain} (the same with a whole RelayService),
    C{minimal} (the minimal-Twisted HMAC acceptor, claudectl's handshake),
    C{minimal-tls} (the minimal-Twisted acceptor of relaymesh's handshake
    over TLS) and C{raw} (claudectl's handshake on raw sockets).
    """
    script, role, extra, hammer_flags = {
        "relaymesh": ("node.py", "hold", [], ["--tls"]),
        "relaymesh-plain": ("node.py", "hold", [], []),
        "relaymesh-service": ("node.py", "hold", ["--service"], ["--tls"]),
        "relaymesh-service-plain": ("node.py", "hold", ["--service"], []),
        "minimal": ("minimal.py", "hmac", [], []),
        "minimal-tls": ("minimal.py", "hmac", ["--tls"], ["--tls"]),
        "raw": ("raw.py", "hmac", [], []),
    }[variant]
    with Workers() as workers:
        acceptor = workers.start(script, role, *extra)
        port = acceptor.expect("READY")["port"]
        wait_idle(acceptor.pid)
        ticks = benchlib.cpu_ticks(acceptor.pid)
        hammer = workers.start(
            "raw.py", "hammer", "--port", port, "--conns", 16, "--duration", duration, *hammer_flags
        )
        result = hammer.expect("RESULT", timeout=duration + 30)
        ticks = benchlib.cpu_ticks(acceptor.pid) - ticks
    cpu = ticks / os.sysconf("SC_CLK_TCK")
    return {
        "rate": result["rate"],
        "failed": result["failed"],
        # CPU seconds per second: of the acceptor, and of the connectors
        "acceptor_cpu": cpu / result["seconds"],
        "hammer_cpu": result["cpu"] / result["seconds"],
        "acceptor_ms_per_handshake": cpu / max(result["count"], 1) * 1000,
    }


def memory_once(variant: str, steps: list[int], heartbeats: int) -> dict:
    """
    Resident memory of one node holding 0, then C{steps} idle peers that
    have each sent C{heartbeats} heartbeats.
    """
    script = {"relaymesh": "node.py", "minimal": "minimal.py", "raw": "raw.py"}[variant]
    figures = {}
    with Workers() as workers:
        node = workers.start(script, "hold", timeout=300)
        port = node.expect("READY")["port"]
        wait_idle(node.pid)
        base = benchlib.rss_bytes(node.pid)
        figures["rss_0"] = base
        extra = ["--handshake"] if variant == "relaymesh" else []
        peers = workers.start(
            "raw.py", "idle", "--port", port, "--steps", ",".join(map(str, steps)),
            "--heartbeats", heartbeats, *extra, timeout=300,
        )
        peers.expect("READY")
        for _ in steps:
            n = peers.expect("STEP")["peers"]
            wait_idle(node.pid)
            rss = benchlib.rss_bytes(node.pid)
            figures[f"rss_{n}"] = rss
            figures[f"per_peer_{n}"] = (rss - base) / n
            peers.send("next")
    return figures


def latency_once(variant: str, load_rate: float, count: int) -> dict:
    """
    Round trips of a probe and its answer: idle, then with another peer
    sending C{load_rate} messages per second to the same node (relaymesh:
    a raw-socket sender authenticated as a claudectl peer, in clear).
    C{relaymesh} probes over TLS, C{relaymesh-plain} in clear.
    """
    script, flags = {
        "relaymesh": ("node.py", []),
        "relaymesh-plain": ("node.py", ["--plain"]),
        "minimal": ("minimal.py", []),
        "raw": ("raw.py", []),
    }[variant]
    figures = {}
    for phase, rate in (("idle", 0), ("load", load_rate)):
        with Workers() as workers:
            echo = workers.start(script, "echo", *flags)
            port = echo.expect("READY")["port"]
            if rate:
                extra = ["--handshake"] if script == "node.py" else []
                load = workers.start(
                    "raw.py", "source", "--port", port, "--rate", rate, "--count", 50_000,
                    "--duration", 60, *extra,
                )
                load.expect("READY")
                time.sleep(0.5)
            prober = workers.start(script, "prober", "--port", port, "--count", count, *flags)
            result = prober.expect("RESULT", timeout=60)
            if rate and load.process.poll() is not None:
                raise BenchError(f"latency {variant}: the load stopped early{load._tail()}")
        figures[f"{phase}_p50_ms"] = result["p50"] * 1000
        figures[f"{phase}_p99_ms"] = result["p99"] * 1000
    return figures


def growth_once(variant: str, peers: int, count: int) -> dict:
    """
    Messages per second one node receives when C{count} messages arrive
    spread over C{peers} connections.
    """
    script = {"relaymesh": "node.py", "minimal": "minimal.py", "raw": "raw.py"}[variant]
    with Workers() as workers:
        args = ["--conns", peers] if variant == "raw" else []
        sink = workers.start(script, "sink", "--expect", count, *args)
        port = sink.expect("READY")["port"]
        extra = ["--handshake"] if variant == "relaymesh" else []
        workers.start(
            "raw.py", "source", "--port", port, "--conns", peers, "--count", count, "--size", 200, *extra
        )
        received = sink.expect("RESULT")
    return {"rate": received["rate"], "rx_cpu_per_million": received["cpu_per_million"]}


#: Seconds to wait for a quiet machine before each run (less in --quick,
#: which must stay under a minute).
PATIENCE = {"value": 10.0}


def routed_once(variant: str, size: int, count: int) -> dict:
    """
    Messages per second a sink receives from a source that is not its peer,
    through a middle node both are connected to (relaymesh: routing on all
    three, over TLS; the baselines forward every line they decode, over
    TLS with C{minimal-tls}, or copy bytes). There is no relaymesh figure
    in clear: links with claudectl's handshake carry no capabilities, so
    they do not route.
    """
    script, flags = {
        "relaymesh": ("node.py", []),
        "minimal": ("minimal.py", []),
        "minimal-tls": ("minimal.py", ["--tls"]),
        "raw": ("raw.py", []),
    }[variant]
    extra = ["--routing"] if script == "node.py" else []
    with Workers() as workers:
        sink = workers.start(script, "sink", "--expect", count, *extra, *flags, timeout=60)
        port = sink.expect("READY")["port"]
        middle = workers.start(script, "middle", "--port", port, *flags, timeout=60)
        port = middle.expect("READY")["port"]
        workers.start(
            script, "source", "--port", port, "--count", count, "--size", size, *extra, *flags, timeout=60
        )
        received = sink.expect("RESULT")
    return {"rate": received["rate"], "rx_cpu_per_million": received["cpu_per_million"]}


def measure(label: str, runs: int, once, *args) -> dict:
    results = []
    for _ in range(runs):
        busy = wait_quiet(patience=PATIENCE["value"])
        figures = once(*args)
        figures["busy_before"] = busy
        results.append(figures)
    figures = median_of(results)
    shown = {k: v for k, v in figures.items() if k not in ("runs", "busy_before")}
    print(f"  {label}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items()), flush=True)
    return figures


def _fmt(value) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}"
    return str(value)


# -- suites ------------------------------------------------------------------


def run_suite(options) -> dict:
    results: dict = {"codec": benchlib.codec()[0], "runs": options.runs, "python": sys.version.split()[0]}
    only = set(options.only.split(",")) if options.only else None
    quick = options.quick

    def wanted(name: str) -> bool:
        return (only is None or name in only) and (not quick or name == "throughput")

    runs = options.runs
    if wanted("throughput"):
        print("throughput, one connection", flush=True)
        sizes = {200: 400_000 if quick else 1_000_000, 4096: 80_000 if quick else 300_000}
        every = ["relaymesh", "minimal-tls", "relaymesh-plain", "minimal", "relaymesh-rx", "minimal-rx", "raw"]
        for size, count in sizes.items():
            for variant in QUICK_VARIANTS[size] if quick else every:
                results[f"throughput_{size}_{variant}"] = measure(
                    f"{size} B {variant}", runs, throughput_once, variant, size, count
                )
    if wanted("routed"):
        print("routed through one middle node", flush=True)
        for variant in ("relaymesh", "minimal-tls", "minimal", "raw"):
            try:
                results[f"routed_{variant}"] = measure(variant, runs, routed_once, variant, 200, 300_000)
            except BenchError as e:
                # routing is optional in a tree; its absence is a figure too
                results[f"routed_{variant}"] = {"error": str(e).splitlines()[0]}
                print(f"  {variant}: not measured: {str(e).splitlines()[0]}", flush=True)
    if wanted("fanout"):
        print("fan-out (broadcast)", flush=True)
        for peers, count in ((8, 40_000), (64, 6_000)):
            for variant in ("relaymesh", "minimal", "raw"):
                results[f"fanout_{peers}_{variant}"] = measure(
                    f"{peers} peers {variant}", runs, fanout_once, variant, peers, count
                )
    if wanted("handshakes"):
        print("handshakes, 16 concurrent connectors", flush=True)
        variants = (
            "relaymesh", "relaymesh-plain", "relaymesh-service", "relaymesh-service-plain",
            "minimal-tls", "minimal", "raw",
        )
        for variant in variants:
            results[f"handshakes_{variant}"] = measure(variant, runs, handshakes_once, variant, 3.0)
    if wanted("memory"):
        print("memory, idle peers after 1000 heartbeats each", flush=True)
        steps = [1, 10, 100, 1000]
        for variant in ("relaymesh", "minimal", "raw"):
            results[f"memory_{variant}"] = measure(variant, runs, memory_once, variant, steps, 1000)
    if wanted("latency"):
        print("latency, round trip of a message and its reply", flush=True)
        base = results.get("throughput_200_relaymesh-plain", {}).get("rate", 200_000)
        load_rate = round(base / 2, -3)
        results["latency_load_rate"] = load_rate
        for variant in ("relaymesh", "relaymesh-plain", "minimal", "raw"):
            results[f"latency_{variant}"] = measure(variant, runs, latency_once, variant, load_rate, 2000)
    if wanted("growth"):
        print("throughput against the number of peers", flush=True)
        for peers in (1, 10, 100, 1000):
            for variant in ("relaymesh", "minimal"):
                results[f"growth_{peers}_{variant}"] = measure(
                    f"{peers} peers {variant}", runs, growth_once, variant, peers, 300_000
                )
    return results


# -- reporting ---------------------------------------------------------------


def rows(results: dict) -> list[tuple[str, str, str, str, str, str]]:
    """
    The table: figure, relaymesh, minimal Twisted, ratio, raw sockets, ratio.

    Each row compares like with like: relaymesh over TLS with the minimal
    Twisted programs over TLS (there is no raw-socket TLS baseline), and
    relaymesh in clear (claudectl's handshake) with the baselines in clear.
    """
    table = []

    def ratio(a, b) -> str:
        if a is None or b is None or not b:
            return ""
        return f"{a / b:.2f}"

    def add(label, mine, minimal=None, raw=None, fmt="{:,.0f}"):
        show = lambda v: "" if v is None else fmt.format(v)  # noqa: E731
        table.append((label, show(mine), show(minimal), ratio(mine, minimal), show(raw), ratio(mine, raw)))

    def get(key, field):
        return results.get(key, {}).get(field)

    for size, name in ((200, "200 B"), (4096, "4 KiB")):
        t = lambda v, f: get(f"throughput_{size}_{v}", f)  # noqa: E731
        for mine, minimal, raw, how in (
            ("relaymesh", "minimal-tls", None, "over TLS"),
            ("relaymesh-plain", "minimal", "raw", "in clear"),
        ):
            if t(mine, "rate") is None:
                continue
            raw_rate = t(raw, "rate") if raw else None
            raw_mbps = t(raw, "mbps") if raw else None
            add(f"1 connection {name}, node to node {how}: msgs/s", t(mine, "rate"), t(minimal, "rate"), raw_rate)
            add(f"1 connection {name}, node to node {how}: MB/s", t(mine, "mbps"), t(minimal, "mbps"), raw_mbps, "{:,.1f}")
            add(f"1 connection {name} {how}, receiver CPU s per M msgs", t(mine, "rx_cpu_per_million"), t(minimal, "rx_cpu_per_million"), None, "{:.2f}")
            add(f"1 connection {name} {how}, sender CPU s per M msgs", t(mine, "tx_cpu_per_million"), t(minimal, "tx_cpu_per_million"), None, "{:.2f}")
        if t("relaymesh-rx", "rate") is not None:
            add(f"1 connection {name}, raw sender to receiver: msgs/s", t("relaymesh-rx", "rate"), t("minimal-rx", "rate"), t("raw", "rate"))
            add(f"1 connection {name}, raw sender to receiver: CPU s per M msgs", t("relaymesh-rx", "rx_cpu_per_million"), t("minimal-rx", "rx_cpu_per_million"), None, "{:.2f}")
    for peers in (8, 64):
        if f"fanout_{peers}_relaymesh" in results:
            f = lambda v: get(f"fanout_{peers}_{v}", "rate")  # noqa: E731
            add(f"broadcast to {peers} peers: msgs/s delivered", f("relaymesh"), f("minimal"), f("raw"))
    if "handshakes_relaymesh" in results:
        h = lambda v: get(f"handshakes_{v}", "rate")  # noqa: E731
        add("handshakes/s, 16 connectors, relaymesh's over TLS", h("relaymesh"), h("minimal-tls"))
        add("handshakes/s, 16 connectors, claudectl's in clear", h("relaymesh-plain"), h("minimal"), h("raw"))
        add("handshakes/s, whole RelayService, relaymesh's over TLS", h("relaymesh-service"), h("minimal-tls"))
        add("handshakes/s, whole RelayService, claudectl's in clear", h("relaymesh-service-plain"), h("minimal"), h("raw"))
    if "memory_relaymesh" in results:
        m = lambda v, f: get(f"memory_{v}", f)  # noqa: E731
        add("resident memory, no peers: MB", *(None if m(v, "rss_0") is None else m(v, "rss_0") / 1e6 for v in ("relaymesh", "minimal", "raw")), fmt="{:,.1f}")
        for n in (1, 100, 1000):
            add(f"resident memory, {n} idle peers: MB", *(None if m(v, f"rss_{n}") is None else m(v, f"rss_{n}") / 1e6 for v in ("relaymesh", "minimal", "raw")), fmt="{:,.1f}")
        add("memory per idle peer (1000 peers): KB", *(None if m(v, "per_peer_1000") is None else m(v, "per_peer_1000") / 1e3 for v in ("relaymesh", "minimal", "raw")), fmt="{:,.1f}")
    if "latency_relaymesh-plain" in results:
        lat = lambda v, f: get(f"latency_{v}", f)  # noqa: E731
        for phase, what in (("idle", "idle"), ("load", f"under load ({results.get('latency_load_rate', 0):,.0f} msgs/s)")):
            for p in ("p50", "p99"):
                add(f"round trip {p}, {what}, in clear: ms", lat("relaymesh-plain", f"{phase}_{p}_ms"), lat("minimal", f"{phase}_{p}_ms"), lat("raw", f"{phase}_{p}_ms"), "{:.3f}")
    routed = lambda v: get(f"routed_{v}", "rate")  # noqa: E731
    if "routed_relaymesh" in results:
        if routed("relaymesh") is None:
            table.append(("routed through one middle node, over TLS: msgs/s", "n/a", "", "", "", ""))
        else:
            add("routed through one middle node, over TLS: msgs/s", routed("relaymesh"), routed("minimal-tls"))
    return table


def tls_rows(results: dict) -> list[tuple[str, str, str, str]]:
    """
    What TLS costs: each figure over TLS, in clear, and the one over the
    other.
    """
    table = []

    def get(key, field):
        return results.get(key, {}).get(field)

    def add(label, tls, plain, fmt="{:,.0f}"):
        if tls is None and plain is None:
            return
        show = lambda v: "" if v is None else fmt.format(v)  # noqa: E731
        ratio = f"{tls / plain:.2f}" if tls is not None and plain else ""
        table.append((label, show(tls), show(plain), ratio))

    for size, name in ((200, "200 B"), (4096, "4 KiB")):
        t = lambda v, f: get(f"throughput_{size}_{v}", f)  # noqa: E731
        add(f"{name} node to node, relaymesh: msgs/s", t("relaymesh", "rate"), t("relaymesh-plain", "rate"))
        add(f"{name} node to node, minimal Twisted: msgs/s", t("minimal-tls", "rate"), t("minimal", "rate"))
        mine, plain = t("relaymesh", "rate"), t("relaymesh-plain", "rate")
        base, base_plain = t("minimal-tls", "rate"), t("minimal", "rate")
        add(
            f"{name} node to node, relaymesh / minimal Twisted",
            mine / base if mine and base else None,
            plain / base_plain if plain and base_plain else None,
            "{:.2f}",
        )
        add(f"{name} relaymesh receiver: CPU s per M msgs", t("relaymesh", "rx_cpu_per_million"), t("relaymesh-plain", "rx_cpu_per_million"), "{:.2f}")
        add(f"{name} relaymesh sender: CPU s per M msgs", t("relaymesh", "tx_cpu_per_million"), t("relaymesh-plain", "tx_cpu_per_million"), "{:.2f}")
    h = lambda v: get(f"handshakes_{v}", "rate")  # noqa: E731
    add("handshakes/s, relaymesh node, 16 connectors", h("relaymesh"), h("relaymesh-plain"))
    add("handshakes/s, whole RelayService, 16 connectors", h("relaymesh-service"), h("relaymesh-service-plain"))
    add("handshakes/s, minimal Twisted, 16 connectors", h("minimal-tls"), h("minimal"))
    lat = lambda v, f: get(f"latency_{v}", f)  # noqa: E731
    for phase, what in (("idle", "idle"), ("load", "under load")):
        for p in ("p50", "p99"):
            add(f"relaymesh round trip {p}, {what}: ms", lat("relaymesh", f"{phase}_{p}_ms"), lat("relaymesh-plain", f"{phase}_{p}_ms"), "{:.3f}")
    return table


def growth_rows(results: dict) -> list[tuple[str, ...]]:
    """
    How throughput and memory grow with the number of peers.
    """
    table = []
    base_rate = results.get("growth_1_relaymesh", {}).get("rate")
    for n in (1, 10, 100, 1000):
        mine = results.get(f"growth_{n}_relaymesh", {}).get("rate")
        cpu = results.get(f"growth_{n}_relaymesh", {}).get("rx_cpu_per_million")
        minimal = results.get(f"growth_{n}_minimal", {}).get("rate")
        memory = results.get("memory_relaymesh", {}).get(f"rss_{n}")
        per_peer = results.get("memory_relaymesh", {}).get(f"per_peer_{n}")
        table.append(
            (
                str(n),
                "" if mine is None else f"{mine:,.0f}",
                "" if mine is None or not base_rate else f"{mine / base_rate:.2f}",
                "" if cpu is None else f"{cpu:.2f}",
                "" if minimal is None else f"{minimal:,.0f}",
                "" if mine is None or not minimal else f"{mine / minimal:.2f}",
                "" if memory is None else f"{memory / 1e6:,.1f}",
                "" if per_peer is None else f"{per_peer / 1e3:,.1f}",
            )
        )
    return table


def print_table(headers, table) -> None:
    widths = [max(len(str(r[i])) for r in [headers, *table]) for i in range(len(headers))]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for r in table:
        print("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))))


def rst_table(headers, table) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *table]) for i in range(len(headers))]
    rule = "  ".join("=" * w for w in widths)
    lines = [rule, "  ".join(h.ljust(w) for h, w in zip(headers, widths)), rule]
    for r in table:
        lines.append("  ".join((str(c) or "-").ljust(w) for c, w in zip(r, widths)).rstrip())
    lines.append(rule)
    return "\n".join(lines)


HEADERS = ("figure", "relaymesh", "minimal Twisted", "ratio", "raw sockets", "ratio")
TLS_HEADERS = ("figure", "over TLS", "in clear", "TLS / clear")
GROWTH_HEADERS = (
    "peers",
    "msgs/s",
    "vs 1 peer",
    "CPU s per M msgs",
    "minimal msgs/s",
    "ratio",
    "RSS MB",
    "KB per peer",
)


def check_goals(results: dict) -> list[tuple[str, str, bool]]:
    """
    The issue's goals: what each asks, what was measured, whether met.
    """
    checks = []

    def get(key, field):
        return results.get(key, {}).get(field)

    paths = (("over TLS", "relaymesh", "minimal-tls"), ("in clear", "relaymesh-plain", "minimal"))
    for size, floor, ratio in ((200, 270_000, 0.5), (4096, 120_000, 0.7)):
        for how, variant, baseline in paths:
            mine = get(f"throughput_{size}_{variant}", "rate")
            base = get(f"throughput_{size}_{baseline}", "rate")
            if mine and base:
                checks.append(
                    (
                        f"{size} B {how}: >= {floor:,} msgs/s and >= {ratio:.0%} of minimal Twisted {how}",
                        f"{mine:,.0f} msgs/s, {mine / base:.0%}",
                        mine >= floor and mine >= ratio * base,
                    )
                )
    per_peer = get("memory_relaymesh", "per_peer_1000")
    if per_peer is not None:
        checks.append(("1000 idle peers: < 30 KB per peer", f"{per_peer / 1e3:.1f} KB", per_peer < 30_000))
    for how, variant in (("relaymesh's over TLS", "relaymesh"), ("claudectl's in clear", "relaymesh-plain")):
        hs = get(f"handshakes_{variant}", "rate")
        if hs is not None:
            checks.append((f"handshakes ({how}): >= 5000/s with 16 connectors", f"{hs:,.0f}/s", hs >= 5000))
    for how, variant, _ in paths:
        p99 = get(f"latency_{variant}", "load_p99_ms")
        if p99 is not None:
            checks.append((f"round trip under load {how}: p99 < 10 ms", f"{p99:.2f} ms", p99 < 10))
    return checks


def plot(results: dict, path: str) -> None:
    """
    Throughput and memory against the number of peers, as a PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peers = [1, 10, 100, 1000]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for variant, style in (("relaymesh", "o-"), ("minimal", "s--")):
        rates = [results.get(f"growth_{n}_{variant}", {}).get("rate") for n in peers]
        if all(r is not None for r in rates):
            left.plot(peers, [r / 1000 for r in rates], style, label=f"{variant if variant == 'relaymesh' else 'minimal Twisted'}")
    for axes in (left, right):
        axes.set_xscale("log")
        axes.set_xticks(peers, [str(n) for n in peers])
    left.set_ylim(bottom=0)
    left.set_xlabel("connected peers sending (log scale)")
    left.set_ylabel("messages received per second (thousands)")
    left.set_title("Receive throughput, 200-byte messages")
    left.legend()
    left.grid(True, alpha=0.3)
    for variant, style, label in (("relaymesh", "o-", "relaymesh"), ("minimal", "s--", "minimal Twisted"), ("raw", "^:", "raw sockets")):
        mem = results.get(f"memory_{variant}", {})
        values = [mem.get(f"rss_{n}") for n in peers]
        if all(v is not None for v in values):
            right.plot(peers, [v / 1e6 for v in values], style, label=label)
    right.set_ylim(bottom=0)
    right.set_xlabel("connected idle peers, 1000 heartbeats each (log scale)")
    right.set_ylabel("resident memory of the node (MB)")
    right.set_title("Memory")
    right.legend()
    right.grid(True, alpha=0.3)
    fig.suptitle(f"relaymesh {results.get('version', '')} on {os.cpu_count()} cores, loopback, {results.get('codec')} codec")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description="relaymesh benchmarks", epilog=__doc__)
    parser.add_argument("--quick", action="store_true", help="single-connection throughput only, with the CI gate")
    parser.add_argument("--plot", action="store_true", help="write docs/performance.png")
    parser.add_argument("--runs", type=int, default=None, help="runs per figure (median); 3 by default")
    parser.add_argument(
        "--only", help="comma-separated: throughput,routed,fanout,handshakes,memory,latency,growth"
    )
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--rst", help="write the tables as reStructuredText to this file")
    parser.add_argument("--from-json", help="report (and plot) figures saved by --json instead of measuring")
    options = parser.parse_args()
    options.runs = options.runs or 3
    if options.quick:
        PATIENCE["value"] = 1.0

    if options.from_json:
        with open(options.from_json) as f:
            results = json.load(f)
    else:
        from relaymesh._version import __version__

        began = time.monotonic()
        try:
            results = run_suite(options)
        except BenchError as e:
            print(f"benchmark failed: {e}", file=sys.stderr)
            return 2
        results["version"] = __version__
        results["seconds"] = time.monotonic() - began

    print()
    print(f"relaymesh {results.get('version')}, {results.get('codec')} codec, median of {results.get('runs')} runs")
    print_table(HEADERS, rows(results))
    if tls_rows(results):
        print()
        print_table(TLS_HEADERS, tls_rows(results))
    if any(k.startswith("growth_") for k in results):
        print()
        print_table(GROWTH_HEADERS, growth_rows(results))
    checks = check_goals(results)
    if checks and not options.quick:
        print()
        for goal, measured, met in checks:
            print(f"{'met    ' if met else 'NOT MET'}  {goal}: {measured}")
    if options.json:
        with open(options.json, "w") as f:
            json.dump(results, f, indent=1, sort_keys=True)
    if options.rst:
        with open(options.rst, "w") as f:
            f.write(rst_table(HEADERS, rows(results)) + "\n\n")
            if tls_rows(results):
                f.write(rst_table(TLS_HEADERS, tls_rows(results)) + "\n\n")
            if any(k.startswith("growth_") for k in results):
                f.write(rst_table(GROWTH_HEADERS, growth_rows(results)) + "\n")
    if options.plot:
        plot(results, os.path.join(os.path.dirname(BENCH), "docs", "performance.png"))
    if "seconds" in results:
        print(f"\n{results['seconds']:.0f} s")

    if options.quick:
        return 0 if gate(results) else 1
    return 0


def gate(results: dict) -> bool:
    """
    Print the CI gate's comparisons; whether every one passes (a figure
    that was not measured fails it).
    """
    passed = True
    for how, variant, baseline in GATED:
        mine = results.get(f"throughput_200_{variant}", {}).get("rate")
        base = results.get(f"throughput_200_{baseline}", {}).get("rate")
        if not mine or not base:
            print(f"gate {how}: FAILED, not measured ({variant} against {baseline})")
            passed = False
            continue
        ratio = mine / base
        verdict = "ok" if ratio >= GATE_RATIO else "FAILED"
        passed = passed and ratio >= GATE_RATIO
        print(
            f"gate {how}: relaymesh {mine:,.0f} msgs/s is {ratio:.2f} x the minimal-Twisted "
            f"{base:,.0f} msgs/s {how} (needs {GATE_RATIO}): {verdict}"
        )
    return passed


if __name__ == "__main__":
    sys.exit(main())
