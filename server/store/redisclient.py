"""The one way every geopush process reaches Redis: a single node or a Redis Cluster.

``GEOPUSH_REDIS_URL`` names a single Redis or any node of a Redis Cluster. With
``GEOPUSH_REDIS_MODE=auto`` (the default) the process asks that node at start
(``INFO cluster``: ``cluster_enabled:1``) and takes redis-py's cluster client
(:class:`redis.asyncio.cluster.RedisCluster`, which learns the slot map from the node and
follows MOVED/ASK and failovers) or the plain one. ``cluster`` or ``standalone`` skip the
question, so a process can start while Redis is unreachable (the web process then keeps
accepting incidents into the outbox); in ``auto`` mode it waits for an answer.

Both clients run the same code: every script and transaction geopush sends names keys
of one hash slot only (``server/keys.py`` says how for each), which a single node does
not care about and a cluster requires. What differs is handled here:

- redis-py refuses scripts (EVALSHA) in a cluster pipeline; :func:`eval_many` sends
  them as raw commands instead, and loads the script where a node lacks it (a node
  that was restarted or promoted from replica has an empty script cache).
- A cluster client's own errors are not ``RedisError``s: :data:`REDIS_UNAVAILABLE`.
- Stream reads go straight to their stream's master (:func:`xreadgroup`), and a new
  cluster client learns the slot map before it is handed out (``_learn_slots``).
- Hand-offs wait for replicas when asked (:class:`ReplicaWait`, :func:`write_all`).
- Commands without a key (KEYS, DBSIZE) go to one node of a cluster: geopush itself
  never uses them; tests and tools iterate with SCAN (``scan_iter``), which visits
  every master.

Why, and what was measured: docs/adr/0003-redis-cluster.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisClusterException, RedisError
from redis.typing import EncodableT

from server import metrics
from server.settings import Settings

log = logging.getLogger(__name__)

RedisClient: TypeAlias = "aioredis.Redis | RedisCluster"
"""What every function that talks to Redis takes: either client, the same commands."""

REDIS_UNAVAILABLE: tuple[type[Exception], ...] = (RedisError, RedisClusterException, OSError)
"""What a command raises when Redis can't serve it now: redis-py's errors, the network's,
and a cluster client's own, which are not ``RedisError``s ("cannot be connected", a
slot not covered while a failover is under way). Every "Redis is down, carry on"
handler catches these."""

ScriptCall = tuple[Sequence[str], Sequence[EncodableT]]
"""One call of a script: its keys (one slot) and its arguments."""


async def is_cluster(url: str, *, connect_timeout: float = 5.0) -> bool:
    """Whether the Redis at ``url`` is a node of a Redis Cluster (``INFO cluster``).

    Raises ``RedisError``/``OSError`` when it cannot be reached."""
    probe = aioredis.Redis.from_url(url, socket_connect_timeout=connect_timeout,
                                    socket_timeout=connect_timeout)
    try:
        info: dict[str, Any] = await probe.info("cluster")
    finally:
        await probe.aclose()
    return str(info.get("cluster_enabled", "0")) == "1"


async def detect_cluster(url: str, *, connect_timeout: float = 5.0,
                         max_backoff: float = 5.0) -> bool:
    """:func:`is_cluster`, asking again until the node answers (a process starting
    while Redis is still coming up waits for it, rather than guessing)."""
    backoff = 0.2
    while True:
        try:
            return await is_cluster(url, connect_timeout=connect_timeout)
        except REDIS_UNAVAILABLE as exc:
            log.warning("redis at %s not reachable to tell cluster from single node "
                        "(%s); asking again in %.1fs (GEOPUSH_REDIS_MODE=cluster or "
                        "standalone skips the question)", _safe(url), exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)


async def connect(
    url: str, mode: str = "auto", *, decode_responses: bool = False,
    socket_timeout: float | None = None, socket_connect_timeout: float = 5.0,
    health_check_interval: float = 30, max_connections: int | None = None,
) -> RedisClient:
    """A client for the Redis (or Redis Cluster) at ``url``; see the module docstring.

    ``max_connections``: per node of a cluster (redis-py's default, 100, if None); a
    single node's pool grows as needed unless given."""
    if mode not in ("auto", "cluster", "standalone"):   # settings.REDIS_MODES
        raise ValueError(f"unknown redis mode {mode!r}")
    cluster = mode == "cluster" or (
        mode == "auto" and await detect_cluster(url, connect_timeout=socket_connect_timeout))
    options: dict[str, Any] = {
        "decode_responses": decode_responses, "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_connect_timeout,
        "health_check_interval": health_check_interval,
    }
    if max_connections is not None:
        options["max_connections"] = max_connections
    if cluster:
        log.info("redis: cluster mode, entry node %s", _safe(url))
        client = RedisCluster.from_url(url, **options)
        await _learn_slots(client)
        return client
    return aioredis.Redis.from_url(url, **options)


_LEARNING: set[asyncio.Task[None]] = set()


async def _learn_slots(client: RedisCluster) -> None:
    """The slot map, learnt now rather than by the first commands: redis-py 8.1's
    cluster client, initialized by a burst of concurrent first commands, can hand one
    of them a connection it is closing (AttributeError: 'NoneType' object has no
    attribute 'writelines'; tests/integration/test_redis_cluster.py shows it). If the
    cluster can't be reached yet, a task keeps asking in the background."""
    try:
        await client.initialize()
        return
    except REDIS_UNAVAILABLE as exc:
        log.warning("redis cluster not reachable yet (%s); learning its slots in the "
                    "background", exc)

    async def again() -> None:
        backoff = 0.5
        while True:
            await asyncio.sleep(backoff)
            try:
                await client.initialize()
                log.info("redis cluster reachable: slot map learnt")
                return
            except REDIS_UNAVAILABLE:
                backoff = min(backoff * 2, 5.0)

    task = asyncio.create_task(again())
    _LEARNING.add(task)
    task.add_done_callback(_LEARNING.discard)


def is_cluster_client(redis: RedisClient) -> bool:
    return isinstance(redis, RedisCluster)


@dataclass(frozen=True)
class ReplicaWait:
    """How a hand-off to Redis is made durable before geopush forgets its own record
    (an incident's outbox row deleted, an incident's stream entry acknowledged once its
    pushes are enqueued): ``WAIT replicas timeout_ms`` on the connection that wrote, to
    every master written to (docs/adr/0003-redis-cluster.md).

    Redis replicates asynchronously: without it, a master killed right after a write
    may be replaced by a replica that never saw it. WAIT returns once ``replicas`` have
    the write or after ``timeout_ms``; geopush goes on either way (a master without a
    connected replica has none to fail over to, and stopping would turn a degraded
    Redis into an outage), counting the shortfall in
    ``geopush_redis_unreplicated_writes_total``. ``replicas=0``: no WAIT."""

    replicas: int = 0
    timeout_ms: int = 500


NO_WAIT = ReplicaWait()


def replica_wait(settings: Settings) -> ReplicaWait:
    """GEOPUSH_REDIS_WAIT_REPLICAS and GEOPUSH_REDIS_WAIT_TIMEOUT_MS."""
    return ReplicaWait(settings.redis_wait_replicas, settings.redis_wait_timeout_ms)

Command = tuple[str, Sequence[EncodableT]]
"""A raw command and the key that routes it (on a cluster: to its slot's master)."""


async def write_all(redis: RedisClient, commands: Sequence[Command],
                    wait: ReplicaWait = NO_WAIT) -> list[Any]:
    """``commands`` in one pipeline (one round trip per node, in order per node), then
    WAIT on every node written to when ``wait`` asks for replicas. Replies in order,
    errors included (not raised)."""
    async with redis.pipeline(transaction=False) as pipe:
        for _key, args in commands:
            pipe.execute_command(*args)
        waits = 0
        if wait.replicas and commands:
            if isinstance(redis, RedisCluster):
                nodes: dict[str, ClusterNode] = {}
                for key, _args in commands:
                    node = redis.get_node_from_key(key)
                    if node is not None:
                        nodes[node.name] = node
                for node in nodes.values():
                    # After the node's writes, on their connection (a cluster pipeline
                    # sends a node's commands in order on one connection).
                    pipe.execute_command("WAIT", wait.replicas, wait.timeout_ms,
                                         target_nodes=node)
                waits = len(nodes)
            else:
                pipe.execute_command("WAIT", wait.replicas, wait.timeout_ms)
                waits = 1
        replies = list(await pipe.execute(raise_on_error=False))
    if waits:
        confirmed = replies[len(commands):]
        if any(isinstance(n, Exception) or int(n) < wait.replicas for n in confirmed):
            metrics.UNREPLICATED_WRITES.inc(len(commands))
            log.warning("redis: %d writes confirmed by fewer than %d replicas within %d ms "
                        "(%s)", len(commands), wait.replicas, wait.timeout_ms, confirmed)
    return replies[:len(commands)]


async def eval_many(redis: RedisClient, script: AsyncScript,
                    calls: Sequence[ScriptCall], wait: ReplicaWait = NO_WAIT) -> list[Any]:
    """Run ``script`` once per call in one pipeline (one round trip per node), in order,
    and return each call's reply; ``wait``: see :class:`ReplicaWait`.

    Each call is atomic on its own (its keys share a slot); the calls are not atomic
    together. A call a node answers with NOSCRIPT never ran: the script is loaded on
    every master and those calls are sent again. Any other error is raised (the calls
    before it may have run, as with any pipeline)."""
    if not calls:
        return []
    replies = await write_all(redis, _evalsha(script.sha, calls), wait)
    missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if missing:
        await redis.script_load(script.script)
        again = await write_all(redis, _evalsha(script.sha, [calls[i] for i in missing]),
                                wait)
        for i, reply in zip(missing, again, strict=True):
            replies[i] = reply
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _evalsha(sha: str, calls: Sequence[ScriptCall]) -> list[Command]:
    # Raw commands: redis-py blocks pipe.evalsha() on a cluster pipeline, but routes a
    # raw EVALSHA by its keys like any other command.
    return [(call_keys[0] if call_keys else "", ("EVALSHA", sha, len(call_keys), *call_keys, *args))
            for call_keys, args in calls]


def xreadgroup_args(redis: RedisClient, group: str, consumer: str, stream: str,
                    count: int, block_ms: int | None = None
                    ) -> tuple[tuple[EncodableT, ...], dict[str, Any]]:
    """The arguments and options of ``XREADGROUP ... STREAMS stream >`` for
    ``execute_command`` on a client or a pipeline (``redis`` the client either way).

    On a cluster the options name the master of the stream's slot: XREADGROUP's keys
    are "movable", so redis-py would otherwise ask a node (COMMAND GETKEYS) where to
    send every read, one more round trip, and to a node that may be the one down."""
    args: tuple[EncodableT, ...] = ("XREADGROUP", "GROUP", group, consumer, "COUNT", count)
    if block_ms is not None:
        args += ("BLOCK", block_ms)
    args += ("STREAMS", stream, ">")
    if isinstance(redis, RedisCluster):
        node = redis.get_node_from_key(stream)
        if node is not None:
            return args, {"target_nodes": node}
    return args, {}


async def xreadgroup(redis: RedisClient, group: str, consumer: str, stream: str,
                     count: int, block_ms: int | None = None) -> Any:
    """One stream's XREADGROUP, routed as :func:`xreadgroup_args` says; the reply as
    redis-py's ``xreadgroup`` gives it."""
    if isinstance(redis, RedisCluster):
        # The slot map is learnt on the first command: route by it from then on.
        await redis.initialize()
    args, options = xreadgroup_args(redis, group, consumer, stream, count, block_ms)
    return await redis.execute_command(*args, **options)


def _safe(url: str) -> str:
    """The URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
