"""What acknowledging stream entries costs the sender: ``StreamConsumer.ack`` (one
script call, XACK and XDEL) side by side with the MULTI/XACK/XDEL/EXEC pipeline it
replaced, on a private Redis.

    python -m loadtest.bench_ack [--batches 300] [--rounds 2]

Each batch is 100 entries like a sender's (a device id and a ~500-byte push), read
with XREADGROUP, then acknowledged one way or the other, alternating; it prints the
acknowledging process's own CPU per entry, and the read's for scale.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from server.dev.devenv import PrivateRedis
from workers.streams import StreamConsumer

WORKDIR = Path(__file__).resolve().parent.parent / ".geopush" / "bench-ack"
BATCH = 100
STREAM, GROUP = "bench:ack", "bench"
FIELDS: dict[Any, Any] = {"device_id": "d" * 36, "push": "p" * 500}


async def _pipeline(redis: aioredis.Redis, ids: list[str]) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.xack(STREAM, GROUP, *ids)
        pipe.xdel(STREAM, *ids)
        await pipe.execute()


async def _run(url: str, batches: int, rounds: int) -> None:
    redis = aioredis.Redis.from_url(url, decode_responses=True)
    consumer = StreamConsumer(redis, STREAM, GROUP, "c", batch=BATCH, block_ms=10)
    await consumer.setup()
    async def pipelined(ids: list[str]) -> None:
        await _pipeline(redis, ids)

    ways: dict[str, Callable[[list[str]], Awaitable[None]]] = {
        "script (StreamConsumer.ack)": consumer.ack, "MULTI pipeline (before)": pipelined}
    print(f"{'way':30} {'ack CPU/entry':>14} {'read CPU/entry':>15}")
    for _ in range(rounds):
        for name, ack in ways.items():
            acking = reading = 0.0
            for _ in range(batches):
                async with redis.pipeline(transaction=False) as pipe:
                    for _ in range(BATCH):
                        pipe.xadd(STREAM, FIELDS)
                    await pipe.execute()
                started = time.process_time()
                entries = await consumer.read()
                reading += time.process_time() - started
                started = time.process_time()
                await ack([eid for eid, _ in entries])
                acking += time.process_time() - started
            n = batches * BATCH
            print(f"{name:30} {acking / n * 1e6:11.2f} µs {reading / n * 1e6:12.2f} µs")
    assert await redis.xlen(STREAM) == 0
    await redis.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    redis = PrivateRedis(WORKDIR / "redis").start()
    try:
        asyncio.run(_run(redis.url(), args.batches, args.rounds))
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
