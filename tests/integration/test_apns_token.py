"""Sender processes share one APNs provider token through Redis."""

from __future__ import annotations

import asyncio

import jwt
import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from server import keys
from workers.apns_token import TOKEN_LIFETIME_S, SharedProviderToken

KEY = ec.generate_private_key(ec.SECP256R1()).private_bytes(
    Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_processes_share_one_token_and_rotate_it_every_40_minutes(
    redis: aioredis.Redis,
) -> None:
    clock = Clock()
    senders = [SharedProviderToken(redis, key_pem=KEY, key_id="K", team_id="T", clock=clock)
               for _ in range(5)]
    headers = await asyncio.gather(*(s.header() for s in senders))
    assert len(set(headers)) == 1                      # one token, even when racing
    claims = jwt.decode(headers[0].removeprefix("bearer "), options={"verify_signature": False})
    assert claims == {"iss": "T", "iat": int(clock.now)}
    assert await redis.ttl(keys.apns_provider_token("T", "K")) <= TOKEN_LIFETIME_S

    clock.now += 19 * 60
    assert {await s.header() for s in senders} == {headers[0]}   # too early to rotate
    clock.now += 22 * 60                                       # 41 minutes
    await redis.delete(keys.apns_provider_token("T", "K"))     # as Redis expires it
    rotated = {await s.header() for s in senders}
    assert len(rotated) == 1 and rotated != {headers[0]}


async def test_a_token_too_old_for_apple_is_replaced_even_if_redis_still_has_it(
    redis: aioredis.Redis,
) -> None:
    clock = Clock()
    first = SharedProviderToken(redis, key_pem=KEY, key_id="K", team_id="T", clock=clock)
    old = await first.header()
    clock.now += 56 * 60   # Redis's TTL runs on Redis's clock; ours says 56 minutes
    second = SharedProviderToken(redis, key_pem=KEY, key_id="K", team_id="T", clock=clock)
    new = await second.header()
    assert new != old
    assert await first.header() == new


async def test_current_is_the_local_copy_while_it_is_good_and_never_touches_redis(
    redis: aioredis.Redis,
) -> None:
    """What the sender's callback path uses: no I/O, None when ``header()`` would have
    to ask Redis (then the send takes the long way, through ``header()``)."""
    clock = Clock()
    token = SharedProviderToken(redis, key_pem=KEY, key_id="K", team_id="T", clock=clock)
    assert token.current() is None                 # nothing fetched yet
    header = await token.header()
    assert token.current() == header
    clock.now += 61                                # the local copy asks Redis again
    assert token.current() is None
    assert await token.header() == header          # the same shared token
    assert token.current() == header
