"""What a stream read costs a worker on a Redis Cluster: redis-py's ``xreadgroup``
(which asks a node ``COMMAND GETKEYS`` where to send each XREADGROUP, its keys being
"movable") side by side with ``redisclient.xreadgroup`` (routed by the stream's slot),
on a private 3-master cluster.

    python -m loadtest.bench_cluster_reads [--reads 3000] [--rounds 3]

Each read asks one push shard's stream for up to 10 new entries and finds none (no
blocking): the read's round trips are all it measures. Alternates the two, ``--rounds``
times, and prints microseconds of wall time and of this process's CPU per read.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from server import keys
from server.dev.devenv import PrivateRedisCluster
from server.store.redisclient import RedisClient, connect, xreadgroup

WORKDIR = Path(__file__).resolve().parent.parent / ".geopush" / "bench-cluster-reads"
GROUP, CONSUMER = "bench", "bench-1"


async def _time(read: Callable[[], Awaitable[Any]], reads: int) -> tuple[float, float]:
    for _ in range(min(200, reads)):   # connections and the slot map warm
        await read()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(reads):
        await read()
    return ((time.perf_counter() - wall) / reads * 1e6,
            (time.process_time() - cpu) / reads * 1e6)


async def _run(url: str, reads: int, rounds: int) -> None:
    redis: RedisClient = await connect(url, decode_responses=True)
    stream = keys.push_stream("apns", 0)
    await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    ways: dict[str, Callable[[], Awaitable[Any]]] = {
        "redis-py xreadgroup": lambda: redis.xreadgroup(GROUP, CONSUMER, {stream: ">"},
                                                        count=10),
        "routed xreadgroup": lambda: xreadgroup(redis, GROUP, CONSUMER, stream, 10),
    }
    try:
        for round_ in range(1, rounds + 1):
            for name, read in ways.items():
                wall, cpu = await _time(read, reads)
                print(f"round {round_}  {name:20}  {wall:6.0f} µs wall  {cpu:6.0f} µs CPU "
                      f"per read")
    finally:
        await redis.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reads", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    shutil.rmtree(WORKDIR, ignore_errors=True)
    cluster = PrivateRedisCluster(WORKDIR, masters=3).start()
    try:
        asyncio.run(_run(cluster.url(), args.reads, args.rounds))
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
