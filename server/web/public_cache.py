"""The public map's answer cache (per web process)."""

from __future__ import annotations

CACHE_S = 10.0


class PublicCache:
    """Answers by rounded bbox for CACHE_S; small, emptied when full."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._items: dict[tuple[float, ...], tuple[float, bytes]] = {}

    def get(self, key: tuple[float, ...], now: float) -> bytes | None:
        hit = self._items.get(key)
        return hit[1] if hit and hit[0] > now else None

    def put(self, key: tuple[float, ...], body: bytes, now: float) -> None:
        if len(self._items) >= self._size:
            self._items.clear()
        self._items[key] = (now + CACHE_S, body)
