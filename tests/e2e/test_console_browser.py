"""The editor console and the public map in a real browser: headless Chromium from
Debian's ``chromium`` package, driven by Playwright, against the whole pipeline (web
app, matcher, senders, fake APNs) on real PostgreSQL/PostGIS and Redis.

Set GEOPUSH_SCREENSHOTS=docs/img to refresh the README's screenshots while they run.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from server.settings import Settings
from server.web.appkeys import REVIEW_FEED
from tests.conftest import ADMIN_TOKEN, Services
from tests.e2e.conftest import Stack, wait_for
from tests.helpers import (
    PASSWORD,
    POINT,
    circle,
    create_agency,
    create_device,
    create_responder,
    create_user,
    incident,
    post_incident,
)

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
LAT, LON = POINT
SCREENSHOTS = os.environ.get("GEOPUSH_SCREENSHOTS")
expect.set_options(timeout=20_000)


@pytest.fixture
def settings(services: Services) -> Settings:
    # Maps open on the test incidents (zoom 14: about 6.4 m a pixel at this latitude).
    return Settings(database_url=services.database_url, redis_url=services.redis_url,
                    admin_token=ADMIN_TOKEN, consumer_name="test-consumer", stream_batch=50,
                    map_center=(LAT, LON, 14))


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            await chromium.close()


class Watched:
    """A page whose script errors and failed requests are collected: none may happen
    but the console's "not signed in yet" (401 from GET /v1/session)."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("console", self._console)
        page.on("response", self._response)

    def _console(self, msg: Any) -> None:
        # Chromium logs every HTTP error as "Failed to load resource"; _response judges
        # those, with the URL.
        if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
            self.errors.append(f"console: {msg.text}")

    def _response(self, response: Any) -> None:
        expected = response.status == 401 and response.url.endswith("/v1/session")
        if response.status >= 400 and not expected:
            self.errors.append(f"{response.status} {response.url}")


async def _open(stack: Stack, browser: Browser, path: str) -> Watched:
    page = await browser.new_page(viewport={"width": 1280, "height": 860})
    watched = Watched(page)
    await page.goto(str(stack.client.make_url(path)))
    return watched


async def _sign_in(stack: Stack, browser: Browser, username: str) -> Watched:
    watched = await _open(stack, browser, "/console/")
    page = watched.page
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Review queue")).to_be_visible()
    # The first read of the queue is done (and the event stream is open): from here on
    # an arriving item is news.
    await expect(page.locator("#queue-status")).to_have_text(
        re.compile("Nothing waiting|waiting"))
    await wait_for(lambda: stack.client.app[REVIEW_FEED].listening.is_set(),
                   what="the review feed to listen")
    return watched


async def _screenshot(page: Page, name: str) -> None:
    if SCREENSHOTS:
        # Playwright creates the directory.
        await page.screenshot(path=str(Path(SCREENSHOTS) / name))


async def _phone(stack: Stack, lat: float, lon: float, radius: float = 150) -> str:
    token = secrets.token_hex(32)
    await create_device(stack.client, "apns", token, circle(lat, lon, radius))
    return token


async def test_an_editor_approves_an_item_that_arrived_live_and_the_phone_gets_it(
        stack: Stack, browser: Browser) -> None:
    secret = await create_agency(stack.client, review=True)
    token = await _phone(stack, LAT, LON, 1000)
    await create_user(stack.client, "seattle-fire", "dana")
    console = await _sign_in(stack, browser, "dana")
    page = console.page
    await expect(page.locator("#queue-status")).to_have_text("Nothing waiting for review.")

    status, body = await post_incident(stack.client, secret, incident("F1"))
    assert (status, body["decision"]) == (202, "review")
    item = page.locator("li.item")
    await expect(item).to_have_count(1)                      # no reload: the event stream
    await expect(page).to_have_title(re.compile(r"^\(1 new\) Review queue"))
    await expect(item.get_by_role("heading")).to_have_text(
        "Structure fire · 5300 block of 24th Ave NE")
    await expect(item.locator(".narrative")).to_contain_text("smoke from 2nd floor")
    await expect(item.locator(".time-left")).to_have_text(re.compile(r"^\d+ min \d\d s$"))
    await expect(item.get_by_role("img", name=re.compile("exact location"))).to_be_visible()
    await _screenshot(page, "console-review-queue.png")

    await item.get_by_label("Title").fill("Fire on 24th Ave NE")
    await item.get_by_role("button", name="Approve").click()
    await expect(page.locator("li.item")).to_have_count(0)
    await wait_for(lambda: len(stack.apns.deliveries) == 1, what="the approved push")
    delivery = stack.apns.deliveries[0]
    assert delivery.token == token
    assert delivery.payload["aps"]["alert"]["title"] == "Fire on 24th Ave NE"
    assert await stack.pool.fetchval("SELECT decided_by FROM review_items") == "dana"
    assert console.errors == []


@pytest.mark.workers("matcher", "apns")
async def test_an_editor_rejects_an_item_and_nothing_is_sent(
        stack: Stack, browser: Browser) -> None:
    secret = await create_agency(stack.client, review=True)
    await _phone(stack, LAT, LON, 1000)
    await create_user(stack.client, "seattle-fire", "dana")
    console = await _sign_in(stack, browser, "dana")
    page = console.page
    await post_incident(stack.client, secret, incident("F1"))
    item = page.locator("li.item")
    await expect(item).to_have_count(1)
    # Keyboard only: focus the Reject button and press Enter.
    await item.get_by_role("button", name="Reject").focus()
    await page.keyboard.press("Enter")
    await expect(page.locator("li.item")).to_have_count(0)
    await expect(page.locator("#last-decision")).to_have_text(
        "Rejected: Structure fire · 5300 block of 24th Ave NE")
    await stack.drained()
    assert stack.apns.deliveries == []
    assert await stack.pool.fetchval("SELECT decision FROM incidents") == "suppressed:rejected"
    assert await stack.pool.fetchval(
        "SELECT actor FROM audit_log WHERE action = 'review.reject'") == "dana"
    assert console.errors == []


@pytest.mark.workers()
async def test_another_agencys_editor_sees_nothing_of_it(
        stack: Stack, browser: Browser) -> None:
    fire = await create_agency(stack.client, review=True)
    police = await create_agency(stack.client, "seattle-police", review=True)
    await create_user(stack.client, "seattle-police", "pat")
    _, first = await post_incident(stack.client, fire, incident("F1"))
    console = await _sign_in(stack, browser, "pat")
    page = console.page
    await expect(page.locator("#queue-status")).to_have_text("Nothing waiting for review.")

    # Another of the fire department's items while pat watches, then one of pat's own:
    # only pat's own appears.
    await post_incident(stack.client, fire, incident("F2"))
    _, own = await post_incident(stack.client, police, incident("P1"), "seattle-police")
    await expect(page.locator("li.item")).to_have_count(1)
    assert await page.locator("li.item").get_attribute("data-incident") == own["incident_id"]

    by_id = await page.request.get(
        str(stack.client.make_url(f"/v1/admin/review/{first['incident_id']}")))
    assert by_id.status == 404
    assert console.errors == []


@pytest.mark.workers("matcher", "apns")
async def test_an_agency_admin_draws_an_area_and_only_phones_in_it_are_alerted(
        stack: Stack, browser: Browser) -> None:
    await create_agency(stack.client)
    await create_user(stack.client, "seattle-fire", "chief", "agency_admin")
    inside = await _phone(stack, LAT, LON, 150)
    outside = await _phone(stack, LAT + 0.02, LON, 150)       # ~2.2 km north
    console = await _sign_in(stack, browser, "chief")
    page = console.page
    await page.get_by_role("button", name="Manual alert").click()

    # Four corners ~770 m around the map's centre (POINT), clicked on the map.
    box = await page.locator("#alert-map").bounding_box()
    assert box is not None
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    for dx, dy in ((-120, -120), (120, -120), (120, 120), (-120, 120)):
        await page.mouse.click(cx + dx, cy + dy)
    await page.get_by_role("button", name="Finish area").click()
    await expect(page.get_by_label("Area (GeoJSON Polygon)")).to_have_value(
        re.compile('"type":"Polygon"'))
    await page.get_by_role("button", name="Preview audience").click()
    await expect(page.locator("#audience")).to_have_text("1 device would receive this alert.")

    await page.get_by_label("Title").fill("Shelter in place")
    await page.get_by_label("Body").fill("Chemical fire near NE 55th St: stay indoors.")
    await page.get_by_label("Severity").select_option("extreme")
    await page.get_by_label("Expires in (minutes)").fill("45")
    await _screenshot(page, "console-manual-alert.png")
    await page.get_by_role("button", name="Send alert").click()
    await expect(page.locator("#alert-status")).to_have_text("Alert sent to 1 device.")

    await wait_for(lambda: len(stack.apns.deliveries) == 1, what="the manual alert")
    await stack.drained()
    assert [d.token for d in stack.apns.deliveries] == [inside]
    assert outside not in {d.token for d in stack.apns.deliveries}
    assert stack.apns.deliveries[0].payload["aps"]["alert"]["title"] == "Shelter in place"

    await page.get_by_role("button", name="Audit log").click()
    await expect(page.locator("#audit-table tbody tr").first).to_contain_text("alert.send")
    await _screenshot(page, "console-audit-log.png")
    assert console.errors == []


async def test_an_agency_admin_sees_what_alerted_responders_answered(
        stack: Stack, browser: Browser) -> None:
    secret = await create_agency(stack.client, call_types={"Cardiac Arrest": "cardiac_arrest"})
    await create_user(stack.client, "seattle-fire", "chief", "agency_admin")
    responders = [await create_responder(stack.client, "apns", secrets.token_hex(32),
                                         (LAT + 0.001, LON)) for _ in range(2)]
    doc = incident("CPR1", call_type="Cardiac Arrest")
    doc["location"]["kind"] = "public"
    status, body = await post_incident(stack.client, secret, doc)
    assert status == 202
    await wait_for(lambda: len(stack.apns.deliveries) == 2, what="both responders' pushes")
    await stack.drained()
    device, key = responders[0]
    r = await stack.client.post(f"/v1/devices/{device}/alerts/{body['incident_id']}/response",
                                headers={"Authorization": f"Bearer {key}"},
                                json={"status": "on_scene"})
    assert r.status == 200, await r.text()

    console = await _sign_in(stack, browser, "chief")
    page = console.page
    await page.get_by_role("button", name="Responders").click()
    await expect(page.locator("#responders-status")).to_have_text(
        "1 CPR call in the last 24 hours.")
    cells = page.locator("#responders-table tbody tr").first.locator("td")
    await expect(cells).to_have_text([re.compile("."), "CPR needed",
                                      "5300 block of 24th Ave NE", "2", "0", "1", "0"])
    assert console.errors == []


@pytest.mark.workers()
async def test_the_public_map_draws_the_last_hours_incidents_without_script_errors(
        stack: Stack, browser: Browser) -> None:
    secret = await create_agency(stack.client, call_types={
        "Fire in Building": "structure_fire", "Burglary": "burglary"})
    await post_incident(stack.client, secret, incident("F1"))
    await post_incident(stack.client, secret, incident(
        "B1", call_type="Burglary", minutes_ago=12, lat=LAT - 0.006, lon=LON + 0.004))
    watched = await _open(stack, browser, "/map/")
    page = watched.page
    await expect(page.locator("#incident-list li")).to_have_count(2)
    await expect(page.locator("#map-status")).to_have_text("2 incidents in view")
    await expect(page.locator("#map path.leaflet-interactive")).to_have_count(2)
    listed = await page.locator("#incident-list").inner_text()
    assert "Structure fire" in listed and "5300 block of 24th Ave NE" in listed
    assert "12 min ago" in listed
    await _screenshot(page, "public-map.png")
    assert watched.errors == []


@pytest.mark.workers()
async def test_a_wrong_password_is_refused_the_cookie_is_out_of_scripts_reach_and_sign_out_works(
        stack: Stack, browser: Browser) -> None:
    await create_agency(stack.client)
    await create_user(stack.client, "seattle-fire", "dana")
    watched = await _open(stack, browser, "/console/")
    page = watched.page
    await page.get_by_label("Username").fill("dana")
    await page.get_by_label("Password").fill("not the password")
    await page.get_by_label("Password").press("Enter")
    await expect(page.get_by_role("alert")).to_have_text("Wrong username or password.")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Review queue")).to_be_visible()
    assert "geopush_session" not in await page.evaluate("document.cookie")     # HttpOnly
    cookie = next(c for c in await page.context.cookies() if c["name"] == "geopush_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    assert await stack.pool.fetchval("SELECT count(*) FROM sessions") == 0
    assert watched.errors == []
