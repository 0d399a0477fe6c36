"""
How C{run.py} reports what it measured: the figures of issue 14, each
beside its baseline measured in the same run, with the ratio, the goal and
whether it is met; the cost of TLS; how the figures grow with the number of
peers; as text, as reStructuredText, as JSON and as a plot.
"""

from __future__ import annotations

import os

from benchlib import CODECS

#: The headers of the main table.
HEADERS = ("figure", "relaymesh", "baseline (same run)", "baseline", "ratio", "goal", "met")
TLS_HEADERS = ("figure", "over TLS", "in clear", "TLS / clear")
GROWTH_HEADERS = (
    "peers",
    "relaymesh msgs/s",
    "vs 1 peer",
    "CPU s per M msgs",
    "orjson receiver msgs/s",
    "ratio",
    "RSS MB",
    "KB per peer",
)

#: The goals of the issue: the ratio of relaymesh's receive throughput to the
#: orjson receiver's, by message size; of relaymesh over TLS to relaymesh in
#: clear, by size; of routed to the minimal forwarder; and the absolute ones.
RECEIVE_GOAL = {200: 0.7, 4096: 1.1}
TLS_GOAL = {200: 0.6, 4096: 0.8}
ROUTED_GOAL = 0.5
HANDSHAKE_GOAL = 1000
MEMORY_GOAL_KB = 6.0
P99_GOAL_MS = 1.0

SIZES = ((200, "200 B"), (4096, "4 KiB"))
PEER_COUNTS = (1, 10, 100, 1000)


class Goal:
    """
    What a figure must reach: a ratio to its baseline (C{"ratio"}), or a
    value at least (C{"min"}) or at most (C{"max"}) C{target}.
    """

    def __init__(self, kind: str, target: float, text: str) -> None:
        self.kind, self.target, self.text = kind, target, text

    def met(self, mine: float | None, base: float | None) -> bool | None:
        if mine is None:
            return None
        if self.kind == "ratio":
            return None if not base else mine / base >= self.target
        if self.kind == "min":
            return mine >= self.target
        return mine <= self.target


def at_least_ratio(target: float) -> Goal:
    return Goal("ratio", target, f">= {target:.2f}x")


class Figures:
    """
    The rows of the main table, built from the results of one run.
    """

    def __init__(self, results: dict) -> None:
        self.results = results
        self.rows: list[dict] = []

    def get(self, key: str, field: str = "rate"):
        value = self.results.get(key, {}).get(field)
        return value if isinstance(value, (int, float)) else None

    def add(self, label, mine, base_label="", base=None, fmt="{:,.0f}", goal: Goal | None = None, key=None):
        """
        A row; left out when relaymesh's figure was not measured, shown as
        not measured when C{key} was attempted and failed or was skipped.
        """
        failed = key is not None and key in self.results and mine is None
        if mine is None and not failed:
            return
        met = goal.met(mine, base) if goal is not None else None
        self.rows.append(
            {
                "figure": label,
                "relaymesh": mine,
                "baseline_name": base_label,
                "baseline": base,
                "ratio": mine / base if mine is not None and base else None,
                "goal": goal.text if goal is not None else "",
                "met": met,
                "format": fmt,
                "note": self.results.get(key, {}).get("skipped") or self.results.get(key, {}).get("error")
                if failed
                else None,
            }
        )


def figures(results: dict) -> list[dict]:
    """
    Every figure of the issue, in its order, each beside its same-run
    baseline, with its ratio and goal.
    """
    f = Figures(results)
    codec = results.get("environment", {}).get("codec", "?")
    for size, name in SIZES:
        key = f"throughput_{size}_relaymesh-rx"
        used = results.get(key, {}).get("codec", codec)
        f.add(
            f"receive {name}, claudectl-style peer, {used} (default): msgs/s",
            f.get(key), "orjson receiver", f.get(f"throughput_{size}_minimal-rx"),
            goal=at_least_ratio(RECEIVE_GOAL[size]), key=key,
        )
        f.add(
            f"receive {name}, receiver CPU s per M msgs",
            f.get(key, "rx_cpu_per_million"), "orjson receiver",
            f.get(f"throughput_{size}_minimal-rx", "rx_cpu_per_million"), fmt="{:.2f}",
        )
    for forced in CODECS:
        for size, name in SIZES:
            key = f"throughput_{size}_relaymesh-rx@{forced}"
            # the goals are the default install's: no verdict here
            f.add(
                f"receive {name}, relaymesh forced to {forced}: msgs/s",
                f.get(key), "orjson receiver", f.get(f"throughput_{size}_minimal-rx"), key=key,
            )
    for size, name in SIZES:
        t = lambda v, field="rate", size=size: f.get(f"throughput_{size}_{v}", field)  # noqa: E731
        f.add(f"{name} node to node over TLS: msgs/s", t("relaymesh"), "minimal over TLS", t("minimal-tls"))
        f.add(f"{name} node to node in clear: msgs/s", t("relaymesh-plain"), "minimal in clear", t("minimal"))
        f.add(
            f"{name} node to node, TLS against clear: msgs/s",
            t("relaymesh"), "relaymesh in clear", t("relaymesh-plain"), goal=at_least_ratio(TLS_GOAL[size]),
        )
    h = lambda v: f.get(f"handshakes_{v}")  # noqa: E731
    at_least = Goal("min", HANDSHAKE_GOAL, f">= {HANDSHAKE_GOAL:,}/s")
    f.add("handshakes/s incl. TLS, 16 connectors", h("relaymesh"), "minimal over TLS", h("minimal-tls"), goal=at_least)
    f.add("handshakes/s incl. TLS, whole RelayService", h("relaymesh-service"), "minimal over TLS", h("minimal-tls"), goal=at_least)
    f.add("handshakes/s claudectl's in clear", h("relaymesh-plain"), "minimal in clear", h("minimal"))
    f.add("handshakes/s claudectl's, whole RelayService", h("relaymesh-service-plain"), "minimal in clear", h("minimal"))
    f.add(
        "routed through one middle node, TLS, 200 B: msgs/s",
        f.get("routed_relaymesh"), "minimal forwarder TLS", f.get("routed_minimal-tls"),
        goal=at_least_ratio(ROUTED_GOAL), key="routed_relaymesh",
    )
    per_peer = lambda v: None if f.get(f"memory_{v}", "per_peer_1000") is None else f.get(f"memory_{v}", "per_peer_1000") / 1e3  # noqa: E731
    f.add(
        "memory per idle peer (1000 peers): KB", per_peer("relaymesh"), "minimal", per_peer("minimal"),
        fmt="{:,.1f}", goal=Goal("max", MEMORY_GOAL_KB, f"<= {MEMORY_GOAL_KB:.1f} KB"),
    )
    load = results.get("latency_load_rate", 0)
    for mine, base, how in (("relaymesh", "minimal-tls", "TLS"), ("relaymesh-plain", "minimal", "in clear")):
        lat = lambda v, field: f.get(f"latency_{v}", field)  # noqa: E731
        base_label = f"minimal {'over TLS' if how == 'TLS' else 'in clear'}"
        for phase, what in (("idle", "idle"), ("load", f"load {load / 1000:,.0f} k/s")):
            for p in ("p50", "p99"):
                goal = Goal("max", P99_GOAL_MS, f"<= {P99_GOAL_MS:.1f} ms") if (phase, p) == ("load", "p99") else None
                f.add(
                    f"round trip {p}, {what}, {how}: ms", lat(mine, f"{phase}_{p}_ms"),
                    base_label, lat(base, f"{phase}_{p}_ms"), fmt="{:.3f}", goal=goal,
                )
    for peers in (8, 64):
        f.add(
            f"broadcast to {peers} peers: msgs/s delivered",
            f.get(f"fanout_{peers}_relaymesh"), "minimal", f.get(f"fanout_{peers}_minimal"),
        )
    return f.rows


def cells(row: dict) -> tuple[str, ...]:
    """
    A row of L{figures} as the table's text cells.
    """
    fmt = row["format"]
    show = lambda v: "" if v is None else fmt.format(v)  # noqa: E731
    mine = show(row["relaymesh"]) if row["note"] is None else "n/a"
    met = {True: "yes", False: "NO", None: "" if not row["goal"] else "n/a"}[row["met"]]
    ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}"
    return (row["figure"], mine, row["baseline_name"], show(row["baseline"]), ratio, row["goal"], met)


def notes(rows: list[dict]) -> list[str]:
    return [f"{row['figure']}: not measured: {row['note']}" for row in rows if row["note"]]


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

    for size, name in SIZES:
        t = lambda v, f, size=size: get(f"throughput_{size}_{v}", f)  # noqa: E731
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
    add("acceptor CPU ms per handshake, relaymesh node", get("handshakes_relaymesh", "acceptor_ms_per_handshake"), get("handshakes_relaymesh-plain", "acceptor_ms_per_handshake"), "{:.2f}")
    add("acceptor CPU ms per handshake, minimal Twisted", get("handshakes_minimal-tls", "acceptor_ms_per_handshake"), get("handshakes_minimal", "acceptor_ms_per_handshake"), "{:.2f}")
    lat = lambda v, f: get(f"latency_{v}", f)  # noqa: E731
    for phase, what in (("idle", "idle"), ("load", "under load")):
        for p in ("p50", "p99"):
            add(f"relaymesh round trip {p}, {what}: ms", lat("relaymesh", f"{phase}_{p}_ms"), lat("relaymesh-plain", f"{phase}_{p}_ms"), "{:.3f}")
    return table


def growth_rows(results: dict) -> list[tuple[str, ...]]:
    """
    How the receive rate (with its ratio to the orjson receiver) and memory
    grow with the number of peers.
    """
    table = []
    base_rate = results.get("growth_1_relaymesh", {}).get("rate")
    for n in PEER_COUNTS:
        mine = results.get(f"growth_{n}_relaymesh", {}).get("rate")
        cpu = results.get(f"growth_{n}_relaymesh", {}).get("rx_cpu_per_million")
        minimal = results.get(f"growth_{n}_minimal", {}).get("rate")
        memory = results.get("memory_relaymesh", {}).get(f"rss_{n}")
        per_peer = results.get("memory_relaymesh", {}).get(f"per_peer_{n}")
        if mine is None and memory is None:
            continue
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


def header_lines(results: dict) -> list[tuple[str, str]]:
    """
    What was measured, as (name, value) pairs.
    """
    # files written before the header existed have the version and codec
    env = {"version": results.get("version", "?"), "codec": results.get("codec", "?"), **results.get("environment", {})}
    codec = env["codec"]
    if env.get("codec_version"):
        codec += f" {env['codec_version']}"
    return [
        ("relaymesh", f"{env.get('version', '?')}, imported from {env.get('relaymesh_path', '?')}: {env.get('relaymesh_origin', '?')}"),
        ("relaymesh's codec", f"{codec} (what relaymesh.wire picks; the baselines decode with {env.get('baseline_codec', 'orjson')})"),
        ("Python", env.get("python", results.get("python", "?"))),
        ("Twisted", env.get("twisted", "?")),
        ("OpenSSL", env.get("openssl", "?")),
        ("machine", f"{env.get('cores', '?')} cores, loopback; median of {results.get('runs')} runs"),
    ]


def width(headers, table) -> list[int]:
    return [max(len(str(r[i])) for r in [headers, *table]) for i in range(len(headers))]


def text_table(headers, table) -> str:
    widths = width(headers, table)
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(), "  ".join("-" * w for w in widths)]
    for r in table:
        lines.append(
            "  ".join(str(c).ljust(w) if i in (0, 2) else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
        )
    return "\n".join(lines)


def rst_table(headers, table) -> str:
    widths = width(headers, table)
    rule = "  ".join("=" * w for w in widths)
    lines = [rule, "  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(), rule]
    for r in table:
        lines.append("  ".join((str(c) or "-").ljust(w) for c, w in zip(r, widths)).rstrip())
    lines.append(rule)
    return "\n".join(lines)


def goal_summary(rows: list[dict]) -> str:
    judged = [r for r in rows if r["goal"]]
    met = [r for r in judged if r["met"]]
    missed = [r["figure"] for r in judged if r["met"] is False]
    text = f"goals: {len(met)} of {len(judged)} met"
    if missed:
        text += "; not met: " + "; ".join(missed)
    return text


def text_report(results: dict) -> str:
    rows = figures(results)
    parts = ["\n".join(f"{name}: {value}" for name, value in header_lines(results))]
    if rows:
        parts += ["", text_table(HEADERS, [cells(r) for r in rows]), *notes(rows), goal_summary(rows)]
    if tls_rows(results):
        parts += ["", text_table(TLS_HEADERS, tls_rows(results))]
    if growth_rows(results):
        parts += ["", text_table(GROWTH_HEADERS, growth_rows(results))]
    return "\n".join(parts)


def rst_report(results: dict) -> str:
    rows = figures(results)
    parts = ["\n".join(f":{name}: {value}" for name, value in header_lines(results))]
    if rows:
        parts += ["", rst_table(HEADERS, [cells(r) for r in rows])]
        parts += [""] + [f"* {note}" for note in notes(rows)] if notes(rows) else []
        parts += ["", goal_summary(rows).replace("; not met: ", ". Not met: ") + "."]
    if tls_rows(results):
        parts += ["", rst_table(TLS_HEADERS, tls_rows(results))]
    if growth_rows(results):
        parts += ["", rst_table(GROWTH_HEADERS, growth_rows(results))]
    return "\n".join(parts) + "\n"


def json_report(results: dict) -> dict:
    """
    The raw figures, with the main table's rows (goal and verdict included).
    """
    rows = [{k: v for k, v in row.items() if k != "format"} for row in figures(results)]
    return {**results, "table": rows}


def plot(results: dict, path: str) -> None:
    """
    The receive rate, its ratio to the orjson receiver and the memory the
    peers take against the number of peers, as a PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peers = list(PEER_COUNTS)
    fig, (rates, ratios, memory) = plt.subplots(1, 3, figsize=(14, 4.2))

    def series(variant, field="rate", key="growth_{n}_{v}"):
        values = [results.get(key.format(n=n, v=variant), {}).get(field) for n in peers]
        return values if all(v is not None for v in values) else None

    mine, base = series("relaymesh"), series("minimal")
    if mine:
        rates.plot(peers, [r / 1000 for r in mine], "o-", label="relaymesh")
    if base:
        rates.plot(peers, [r / 1000 for r in base], "s--", label="minimal Twisted, orjson")
    top = RECEIVE_GOAL[200]
    if mine and base:
        ratios.plot(peers, [a / b for a, b in zip(mine, base)], "o-", label="relaymesh / orjson receiver")
        top = max(top, *(a / b for a, b in zip(mine, base)))
    ratios.axhline(RECEIVE_GOAL[200], color="grey", linestyle=":", label=f"goal, one connection ({RECEIVE_GOAL[200]}x)")
    # growth over no peer rather than per peer: with few peers, per peer
    # is mostly the allocator's granularity
    for variant, style, label in (("relaymesh", "o-", "relaymesh"), ("minimal", "s--", "minimal Twisted")):
        mem = results.get(f"memory_{variant}", {})
        values = [mem.get(f"rss_{n}") for n in peers]
        if mem.get("rss_0") is not None and all(v is not None for v in values):
            memory.plot(peers, [(v - mem["rss_0"]) / 1e6 for v in values], style, label=label)
    memory.plot(
        peers, [n * MEMORY_GOAL_KB / 1e3 for n in peers], ":", color="grey", label=f"goal ({MEMORY_GOAL_KB:g} KB per peer)"
    )
    for axes, ylabel, title in (
        (rates, "messages received per second (thousands)", "Receive throughput, 200 B"),
        (ratios, "relaymesh / orjson receiver", "Ratio to the baseline"),
        (memory, "resident memory over no peer (MB)", "Memory, idle peers"),
    ):
        axes.set_xscale("log")
        axes.set_xticks(peers, [str(n) for n in peers])
        axes.set_ylim(bottom=0, top=top * 1.15 if axes is ratios else None)
        axes.set_xlabel("connected peers (log scale)")
        axes.set_ylabel(ylabel)
        axes.set_title(title)
        axes.legend(fontsize="small")
        axes.grid(True, alpha=0.3)
    env = results.get("environment", {})
    fig.suptitle(
        f"relaymesh {env.get('version', '')}, {env.get('codec', '?')} codec, on {env.get('cores', '?')} cores, loopback"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {os.path.relpath(path)}")
