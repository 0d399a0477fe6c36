#!/usr/bin/env python3
"""
relaymesh's benchmark suite: every figure of the performance goals beside
its baseline measured in the same run, with the ratio and the goal.

Each benchmark runs its nodes as separate processes on 127.0.0.1 (node.py
for relaymesh, minimal.py for the minimal-Twisted baseline, which decodes
every line with orjson, raw.py for the load generators), several times,
and reports the median. The baselines are measured in the same run, so a
change shows as a ratio rather than as an absolute time that drifts with
the machine. relaymesh is the installed one when there is one (see the
report's header), with the codec relaymesh.wire picks by itself.

    python bench/run.py             the whole suite (about 20 minutes)
    python bench/run.py --quick     single-connection throughput only, for
                                    CI (about a minute); exits 1 if relaymesh
                                    falls below half its baseline at 200 B:
                                    receiving, over TLS or in clear
    python bench/run.py --plot      also draw docs/performance.png
                                    (needs matplotlib: pip install .[bench])
    python bench/run.py --only throughput,memory --runs 5 --json out.json
    python bench/run.py --from-json out.json --rst tables.rst --plot

The baselines need orjson (pip install .[bench]); without it the suite
says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)

import benchlib  # noqa: E402
import tables  # noqa: E402
from harness import (  # noqa: E402
    PATIENCE,
    BenchError,
    Workers,
    measure,
    measure_together,
    relaymesh_codec,
    wait_idle,
)

#: Gate for CI: relaymesh's single-connection throughput of 200-byte
#: messages over its baseline's, measured in the same run, must be at least
#: this, on each comparison in L{GATED}.
GATE_RATIO = 0.5

#: The comparisons the gate makes, like with like, with relaymesh as
#: installed (the codec it picks): receiving from a raw sender against the
#: minimal receiver that decodes with orjson; node to node over TLS (the
#: default between relaymesh nodes) against the minimal pair over TLS; and
#: node to node in clear (claudectl's handshake, the path to claudectl
#: peers) against the minimal pair in clear: (path, relaymesh variant,
#: baseline variant).
GATED = (
    ("receiving", "relaymesh-rx", "minimal-rx"),
    ("over TLS", "relaymesh", "minimal-tls"),
    ("in clear", "relaymesh-plain", "minimal"),
)

#: The throughput variants C{--quick} measures, by message size: the gated
#: pairs (about a minute in all, three runs each).
QUICK_VARIANTS = {200: [variant for _, mine, base in GATED for variant in (mine, base)]}

#: Every throughput variant of the whole suite (see L{throughput_once}).
THROUGHPUT_VARIANTS = ["relaymesh-rx", "minimal-rx", "relaymesh", "minimal-tls", "relaymesh-plain", "minimal"]


def line_bytes(size: int) -> int:
    """
    The length of one benchmark message line of about C{size} bytes,
    newline included.
    """
    return len(benchlib.encoded_lines(1, size))


# -- the benchmarks ----------------------------------------------------------
#
# Each *_once function runs one measurement once and returns its
# figures; measure() and measure_together() repeat it and take medians.


def throughput_once(variant: str, size: int, count: int, codec: str | None = None) -> dict:
    """
    One connection, C{count} messages of about C{size} bytes.

    Variants: C{relaymesh-rx} (a raw-socket sender with prepared lines,
    authenticated as a claudectl peer, to relaymesh, in clear: what the
    receiver alone can take, from first byte to last message processed),
    C{minimal-rx} (the same sender to the minimal-Twisted receiver, which
    decodes every line with orjson), C{relaymesh} (node to node: Mesh.send
    to a subscriber, over TLS, the default between relaymesh nodes),
    C{relaymesh-plain} (the same in clear, with claudectl's one-way
    handshake), C{minimal} (a minimal-Twisted sender to a minimal-Twisted
    receiver, in clear), C{minimal-tls} (the same over TLS) and C{raw}
    (socket to socket, counting newlines).

    C{codec} forces relaymesh's codec (C{RELAYMESH_CODEC}); the figures then
    say which codec relaymesh used.
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
        sink = workers.start(sink_script, "sink", "--expect", count, *flags, timeout=60, codec=codec)
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
        **({"codec": received["codec"]} if "codec" in received else {}),
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
    C{relaymesh} and C{minimal-tls} probe over TLS, C{relaymesh-plain} and
    C{minimal} in clear.
    """
    script, flags = {
        "relaymesh": ("node.py", []),
        "relaymesh-plain": ("node.py", ["--plain"]),
        "minimal": ("minimal.py", []),
        "minimal-tls": ("minimal.py", ["--tls"]),
        "raw": ("raw.py", []),
    }[variant]
    figures = {}
    for phase, rate in (("idle", 0), ("load", load_rate)):
        with Workers() as workers:
            echo = workers.start(script, "echo", *flags)
            ready = echo.expect("READY")
            port = ready["port"]
            if rate:
                extra = ["--handshake"] if script == "node.py" else []
                load = workers.start(
                    "raw.py", "source", "--port", ready.get("plain_port", port), "--rate", rate, "--count", 50_000,
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
        sink = workers.start(script, "sink", "--expect", count, *extra, *flags, timeout=120)
        port = sink.expect("READY")["port"]
        middle = workers.start(script, "middle", "--port", port, *flags, timeout=120)
        port = middle.expect("READY")["port"]
        source = workers.start(
            script, "source", "--port", port, "--count", count, "--size", size, *extra, *flags, timeout=120
        )
        try:
            received = sink.expect("RESULT")
        except BenchError as e:
            # what the middle and the source said is where a loss shows
            raise BenchError(f"{e}{middle._tail()}{source._tail()}") from None
    return {"rate": received["rate"], "rx_cpu_per_million": received["cpu_per_million"]}


# -- suites ------------------------------------------------------------------

#: The figures C{--only} can pick, in the order the suite measures them.
FIGURES = ("throughput", "codecs", "routed", "fanout", "handshakes", "memory", "latency", "growth")


def run_suite(options, results: dict) -> dict:
    only = set(options.only.split(",")) if options.only else None
    if only and only - set(FIGURES):
        raise BenchError(f"no such figure: {', '.join(sorted(only - set(FIGURES)))} (choose from {', '.join(FIGURES)})")
    quick = options.quick

    def wanted(name: str) -> bool:
        return (only is None or name in only) and (not quick or name == "throughput")

    runs = options.runs
    sizes = {200: 400_000 if quick else 1_000_000, 4096: 300_000}
    if wanted("throughput"):
        print("throughput, one connection", flush=True)
        for size, count in sizes.items():
            variants = QUICK_VARIANTS.get(size, []) if quick else THROUGHPUT_VARIANTS
            items = [(f"throughput_{size}_{v}", f"{size} B {v}", throughput_once, (v, size, count)) for v in variants]
            results.update(measure_together(items, runs))
    if wanted("codecs"):
        print("receiving, relaymesh forced to each codec", flush=True)
        for size, count in sizes.items():
            baseline = f"throughput_{size}_minimal-rx"
            if baseline not in results:
                results[baseline] = measure(f"{size} B minimal-rx", runs, throughput_once, "minimal-rx", size, count)
            for codec in benchlib.CODECS:
                results[f"throughput_{size}_relaymesh-rx@{codec}"] = forced_codec(results, codec, size, count, runs)
    if wanted("routed"):
        print("routed through one middle node", flush=True)
        for variant in ("relaymesh", "minimal-tls"):
            try:
                results[f"routed_{variant}"] = measure(variant, runs, routed_once, variant, 200, 100_000)
            except BenchError as e:
                # routing is optional in a tree; its absence is a figure too
                results[f"routed_{variant}"] = {"error": str(e).splitlines()[0]}
                print(f"  {variant}: not measured: {str(e).splitlines()[0]}", flush=True)
                print(str(e), file=sys.stderr, flush=True)
    if wanted("fanout"):
        print("fan-out (broadcast)", flush=True)
        for peers, count in ((8, 40_000), (64, 6_000)):
            items = [
                (f"fanout_{peers}_{v}", f"{peers} peers {v}", fanout_once, (v, peers, count))
                for v in ("relaymesh", "minimal")
            ]
            results.update(measure_together(items, runs))
    if wanted("handshakes"):
        print("handshakes, 16 concurrent connectors", flush=True)
        variants = (
            "relaymesh", "relaymesh-service", "minimal-tls", "relaymesh-plain", "relaymesh-service-plain", "minimal",
        )
        items = [(f"handshakes_{v}", v, handshakes_once, (v, 3.0)) for v in variants]
        results.update(measure_together(items, runs))
    if wanted("memory"):
        print("memory, idle peers after 1000 heartbeats each", flush=True)
        steps = [1, 10, 100, 1000]
        items = [(f"memory_{v}", v, memory_once, (v, steps, 1000)) for v in ("relaymesh", "minimal")]
        results.update(measure_together(items, runs))
    if wanted("latency"):
        print("latency, round trip of a message and its reply", flush=True)
        base = results.get("throughput_200_relaymesh-plain", {}).get("rate", 200_000)
        load_rate = round(base / 2, -3)
        results["latency_load_rate"] = load_rate
        variants = ("relaymesh", "minimal-tls", "relaymesh-plain", "minimal")
        items = [(f"latency_{v}", v, latency_once, (v, load_rate, 2000)) for v in variants]
        results.update(measure_together(items, runs))
    if wanted("growth"):
        print("receiving against the number of peers", flush=True)
        for peers in tables.PEER_COUNTS:
            items = [
                (f"growth_{peers}_{v}", f"{peers} peers {v}", growth_once, (v, peers, 300_000))
                for v in ("relaymesh", "minimal")
            ]
            results.update(measure_together(items, runs))
    return results


def forced_codec(results: dict, codec: str, size: int, count: int, runs: int) -> dict:
    """
    The receive figure with relaymesh forced to C{codec}; or why it was not
    measured (C{skipped}: the codec's library is not installed, or
    relaymesh did not take it).
    """
    label = f"{size} B relaymesh-rx, {benchlib.CODEC_VARIABLE}={codec}"
    if not benchlib.codec_importable(codec):
        print(f"  {label}: skipped, {codec} is not installed", flush=True)
        return {"skipped": f"{codec} is not installed"}
    default = results.get(f"throughput_{size}_relaymesh-rx", {})
    if default.get("codec") == codec:
        print(f"  {label}: relaymesh's default, measured above", flush=True)
        return dict(default)
    try:
        used = relaymesh_codec(codec)
        if used != codec:
            reason = f"relaymesh picks {used} with {benchlib.CODEC_VARIABLE}={codec}"
            print(f"  {label}: skipped, {reason}", flush=True)
            return {"skipped": reason}
        figures = measure(label, runs, throughput_once, "relaymesh-rx", size, count, codec)
    except BenchError as e:
        print(f"  {label}: not measured: {str(e).splitlines()[0]}", flush=True)
        return {"error": str(e).splitlines()[0]}
    if figures.get("codec") != codec:
        reason = f"relaymesh used {figures.get('codec', 'another codec')} with {benchlib.CODEC_VARIABLE}={codec}"
        print(f"  {label}: not counted, {reason}", flush=True)
        return {"skipped": reason}
    return figures


# -- main --------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description="relaymesh benchmarks", epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="single-connection throughput only, with the CI gate")
    parser.add_argument("--plot", action="store_true", help="write docs/performance.png")
    parser.add_argument("--runs", type=int, default=None, help="runs per figure (median); 3 by default")
    parser.add_argument("--only", help=f"comma-separated: {','.join(FIGURES)}")
    parser.add_argument("--json", help="write the figures (and the table with goals) to this file")
    parser.add_argument("--rst", help="write the report as reStructuredText to this file")
    parser.add_argument("--from-json", help="report (and plot) figures saved by --json instead of measuring")
    options = parser.parse_args()
    options.runs = options.runs or 3
    if options.quick:
        PATIENCE["value"] = 1.0

    if options.from_json:
        with open(options.from_json) as f:
            results = json.load(f)
        results.pop("table", None)
    else:
        missing = benchlib.missing_baseline_codec()
        if missing:
            print(f"bench: {missing}", file=sys.stderr)
            return 2
        forced = os.environ.pop(benchlib.CODEC_VARIABLE, None)
        if forced is not None:
            print(
                f"bench: ignoring {benchlib.CODEC_VARIABLE}={forced}: the figures are relaymesh's own choice "
                "of codec; '--only codecs' forces each codec in turn"
            )
        results = {"runs": options.runs, "environment": benchlib.describe()}
        print("\n".join(f"{name}: {value}" for name, value in tables.header_lines(results)), flush=True)
        began = time.monotonic()
        try:
            run_suite(options, results)
        except BenchError as e:
            print(f"benchmark failed: {e}", file=sys.stderr)
            return 2
        results["seconds"] = time.monotonic() - began

    print()
    print(tables.text_report(results))
    if options.json:
        with open(options.json, "w") as f:
            json.dump(tables.json_report(results), f, indent=1, sort_keys=True)
    if options.rst:
        with open(options.rst, "w") as f:
            f.write(tables.rst_report(results))
    if options.plot:
        tables.plot(results, os.path.join(os.path.dirname(BENCH), "docs", "performance.png"))
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
            f"gate {how}: relaymesh {mine:,.0f} msgs/s is {ratio:.2f} x the baseline's "
            f"{base:,.0f} msgs/s ({baseline}; needs {GATE_RATIO}): {verdict}"
        )
    return passed


if __name__ == "__main__":
    sys.exit(main())
