"""
How C{run.py} runs the benchmark processes: each worker is a script of
C{bench/} in its own process, spoken to through its standard streams,
stopped through its own handle; and the waiting, repeating and taking of
medians around each measurement.
"""

from __future__ import annotations

import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import benchlib

BENCH = os.path.dirname(os.path.abspath(__file__))

#: Seconds to wait for a quiet machine before each run (less in --quick,
#: which must stay about a minute).
PATIENCE = {"value": 10.0}


class BenchError(Exception):
    """
    A worker failed, timed out or reported an error.
    """


def worker_environment(codec: str | None = None) -> dict:
    """
    The environment of a worker: this one, with C{RELAYMESH_CODEC} set to
    C{codec} (relaymesh forced to that codec), or without it (the codec
    relaymesh picks by itself, as installed).
    """
    env = {k: v for k, v in os.environ.items() if k != benchlib.CODEC_VARIABLE}
    if codec is not None:
        env[benchlib.CODEC_VARIABLE] = codec
    return env


def relaymesh_codec(codec: str | None = None) -> str:
    """
    The codec relaymesh picks in a worker's environment (L{worker_environment}),
    asked of a short-lived process that imports relaymesh as the workers do.
    """
    done = subprocess.run(
        [sys.executable, "-c", "import benchlib; from relaymesh import wire; print(wire.CODEC)"],
        cwd=BENCH,  # on sys.path first, as for a worker script
        env=worker_environment(codec),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["no output"]
        raise BenchError(f"relaymesh does not import with {benchlib.CODEC_VARIABLE}={codec}: {lines[-1]}")
    return done.stdout.strip()


class Worker:
    """
    One benchmark process, spoken to through its standard streams.
    """

    def __init__(self, script: str, *args, timeout: float = 120.0, codec: str | None = None) -> None:
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
            env=worker_environment(codec),
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
                raise BenchError(f"{self.name}: no {kind} within {timeout or self.timeout:g} s{self._tail()}") from None
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

    def start(self, script: str, *args, timeout: float = 120.0, codec: str | None = None) -> Worker:
        worker = Worker(script, *args, timeout=timeout, codec=codec)
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
    The median of each numeric field over several runs; a text field (such
    as the codec a worker used) is kept when every run gave the same.
    """
    fields = {}
    for key in runs[0]:
        values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
        if values:
            fields[key] = statistics.median(values)
        elif isinstance(runs[0][key], str) and all(r.get(key) == runs[0][key] for r in runs):
            fields[key] = runs[0][key]
    fields["runs"] = len(runs)
    return fields



def measure(label: str, runs: int, once, *args) -> dict:
    results = []
    for _ in range(runs):
        busy = wait_quiet(patience=PATIENCE["value"])
        figures = once(*args)
        figures["busy_before"] = busy
        results.append(figures)
    figures = median_of(results)
    shown = {k: v for k, v in figures.items() if k not in ("runs", "busy_before") and not isinstance(v, str)}
    print(f"  {label}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items()), flush=True)
    return figures


def measure_together(items: list, runs: int) -> dict:
    """
    Measure several figures that are compared with one another in turns:
    each of C{runs} rounds runs every item once, so that each figure's
    runs are spread over the same stretch of time as its baseline's and a
    change in the machine's load moves both alike; then the median of each.

    @param items: C{(key, label, once, args)} for each figure.
    @return: the medians by key.
    """
    collected: dict = {key: [] for key, _, _, _ in items}
    for _ in range(runs):
        for key, _, once, args in items:
            busy = wait_quiet(patience=PATIENCE["value"])
            figures = once(*args)
            figures["busy_before"] = busy
            collected[key].append(figures)
    medians = {}
    for key, label, _, _ in items:
        medians[key] = figures = median_of(collected[key])
        shown = {k: v for k, v in figures.items() if k not in ("runs", "busy_before") and not isinstance(v, str)}
        print(f"  {label}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items()), flush=True)
    return medians


def _fmt(value) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}"
    return str(value)


# -- suites ------------------------------------------------------------------
