"""Typed keys for the resources a web process shares (aiohttp ``AppKey``)."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from server.settings import Settings
from server.store.publish import OutboxCleaner
from server.store.ratelimit import LoginLimiter, RateLimiter
from server.store.redisclient import RedisClient
from server.web.agency_cache import AgencyCache
from server.web.public_cache import PublicCache
from server.web.registration import RegistrationCheck
from server.web.review_feed import ReviewFeed

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
REDIS: web.AppKey[RedisClient] = web.AppKey("redis")
LIMITER = web.AppKey("limiter", RateLimiter)
AGENCIES = web.AppKey("agencies", AgencyCache)
OUTBOX = web.AppKey("outbox", OutboxCleaner)
LOGINS = web.AppKey("logins", LoginLimiter)
REVIEW_FEED = web.AppKey("review_feed", ReviewFeed)
PUBLIC_CACHE = web.AppKey("public_cache", PublicCache)
REGISTRATION_CHECK: web.AppKey[RegistrationCheck | None] = web.AppKey("registration_check")
