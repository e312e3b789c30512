"""The push shards (server/keys.py): one function decides a device's shard, and every
key of a shard carries the shard's hash tag, so a script over one shard's devices
stays in one Redis Cluster slot."""

from __future__ import annotations

import re
import uuid
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from server import keys
from server.settings import ConfigError, Settings

BASE = {"GEOPUSH_DATABASE_URL": "postgresql://x/y", "GEOPUSH_REDIS_URL": "redis://x"}
TAG = re.compile(r"\{([^}]*)\}")


def _tag(key: str) -> str:
    """The part of a key Redis Cluster hashes: the first non-empty {...}."""
    match = TAG.search(key)
    assert match and match.group(1), key
    return match.group(1)


def test_the_shard_is_crc32_of_the_canonical_uuid_string() -> None:
    device = "6f1c2b9e-3a4d-4e5f-8a7b-1c2d3e4f5a6b"
    assert keys.device_shard(device, 8) == zlib.crc32(device.encode()) % 8
    assert keys.device_shard(device.upper(), 8) == keys.device_shard(device, 8)
    assert keys.device_shard(uuid.UUID(device), 8) == keys.device_shard(device, 8)


@given(st.uuids(), st.integers(1, keys.MAX_PUSH_STREAM_SHARDS), st.text(min_size=1))
def test_every_key_of_a_device_is_in_its_shards_slot(
    device: uuid.UUID, shards: int, event: str
) -> None:
    shard = keys.device_shard(device, shards)
    assert 0 <= shard < shards
    tags = {_tag(k) for k in (
        keys.device_rate(str(device), shard), keys.device_events(str(device), shard),
        keys.pushed(event.replace("{", "").replace("}", ""), shard),
        *(keys.push_stream(p, shard) for p in keys.PLATFORMS),
        *(keys.retry_schedule(p, shard) for p in keys.PLATFORMS))}
    assert tags == {keys.shard_tag(shard)}


def test_shards_spread_devices_evenly() -> None:
    counts = [0] * 8
    for _ in range(8000):
        counts[keys.device_shard(uuid.uuid4(), 8)] += 1
    # A binomial(8000, 1/8) is within 1000 ± 200 with overwhelming probability.
    assert all(800 < n < 1200 for n in counts), counts


def test_a_platform_has_one_stream_per_shard() -> None:
    assert keys.push_streams("apns", 3) == [
        "geopush:{p0.425}:push:apns", "geopush:{p1.1840}:push:apns",
        "geopush:{p2.171}:push:apns"]
    with pytest.raises(ValueError, match="platform"):
        keys.push_stream("sms", 0)


def test_shard_count_setting() -> None:
    assert Settings.from_env(BASE).push_stream_shards == keys.DEFAULT_PUSH_STREAM_SHARDS
    assert Settings.from_env({**BASE, "GEOPUSH_PUSH_STREAM_SHARDS": "1"}).push_stream_shards == 1


@pytest.mark.parametrize("value", ["0", "-2", "eight", "1025"])
def test_a_bad_shard_count_names_the_setting(value: str) -> None:
    with pytest.raises(ConfigError, match="GEOPUSH_PUSH_STREAM_SHARDS"):
        Settings.from_env({**BASE, "GEOPUSH_PUSH_STREAM_SHARDS": value})


def _masters(shards: int, masters: int) -> list[int]:
    """Shards per master of a cluster whose masters hold equal contiguous slot ranges
    (as ``redis-cli --cluster create`` makes them)."""
    counts = [0] * masters
    for shard in range(shards):
        slot = key_slot(keys.push_stream("apns", shard).encode())
        counts[min(slot * masters // keys.SLOTS, masters - 1)] += 1
    return counts


@pytest.mark.parametrize("shards", [8, 16, 32, 64])
@pytest.mark.parametrize("masters", range(2, 9))
def test_shards_spread_evenly_over_the_masters(shards: int, masters: int) -> None:
    counts = _masters(shards, masters)
    assert max(counts) - min(counts) <= 1, counts


def test_a_shard_tag_is_its_number_and_a_suffix() -> None:
    assert keys.shard_tag(3) == keys.shard_tag(3)
    assert re.fullmatch(r"p3\.\d+", keys.shard_tag(3))
    assert len({keys.shard_tag(k) for k in range(keys.MAX_PUSH_STREAM_SHARDS)}) \
        == keys.MAX_PUSH_STREAM_SHARDS
    with pytest.raises(ValueError, match="shard"):
        keys.shard_tag(keys.MAX_PUSH_STREAM_SHARDS)
