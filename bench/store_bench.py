"""
How much batching a reactor turn's puts into one transaction buys.

Puts N outbox entries into a fresh store twice: once committing every put
on its own (batch=False), once letting every put made in one reactor turn
share a transaction (the default), and prints puts per second for each and
their ratio. Each commit is flushed to disk (synchronous=FULL), so the
numbers depend on the disk under --dir. Informative only: nothing passes or
fails.

    python bench/store_bench.py [--count N] [--burst B] [--dir DIRECTORY]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task

from relaymesh.reliable.store import OutboxEntry, open_store


def entries(count: int, prefix: str) -> list[OutboxEntry]:
    """
    C{count} entries, each a delegate_task line of about 300 bytes.
    """
    line = (
        b'{"id":"x","msg_type":"delegate_task","from_peer":"alpha","timestamp":0,'
        b'"payload":{"task_id":"t","prompt":"' + b"p" * 200 + b'"}}'
    )
    return [
        OutboxEntry(f"{prefix}{i}", "beta", "alpha", "delegate_task", line, float(i), 1e12)
        for i in range(count)
    ]


@defer.inlineCallbacks
def measure(reactor, directory: str, count: int, burst: int, batch: bool):
    """
    Put C{count} entries, C{burst} per reactor turn; return puts per second.
    """
    path = os.path.join(directory, f"bench-{'batched' if batch else 'single'}.sqlite3")
    store = yield open_store(path, reactor, batch=batch)
    todo = entries(count, "m")
    started = time.perf_counter()
    for start in range(0, count, burst):
        yield defer.gatherResults([store.put(e) for e in todo[start : start + burst]])
    elapsed = time.perf_counter() - started
    yield store.close()
    return count / elapsed, store.transactions


@defer.inlineCallbacks
def main(reactor, argv):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="puts per run")
    parser.add_argument(
        "--burst", type=int, default=None, help="puts per reactor turn (all by default)"
    )
    parser.add_argument("--dir", default=None, help="where to put the database files")
    args = parser.parse_args(argv)
    burst = args.burst or args.count
    directory = tempfile.mkdtemp(prefix="store-bench-", dir=args.dir)
    try:
        single, single_tx = yield measure(reactor, directory, args.count, burst, batch=False)
        batched, batched_tx = yield measure(reactor, directory, args.count, burst, batch=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(f"{args.count} puts, {burst} per reactor turn, in {directory}")
    print(f"  commit per put:    {single:10.0f} puts/s  ({single_tx} transactions)")
    print(f"  batched per turn:  {batched:10.0f} puts/s  ({batched_tx} transactions)")
    print(f"  ratio:             {batched / single:10.1f}x")


if __name__ == "__main__":
    task.react(main, [sys.argv[1:]])
