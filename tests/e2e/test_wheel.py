"""``pip install .`` (a wheel, not editable) gives a working geopush: the wheel is built
here, installed into a fresh virtualenv, and its ``geopush migrate`` and ``geopush serve``
run from outside the source tree (so nothing can be found by accident in it)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest

from server.dev.devenv import free_port
from tests.conftest import Services

REPO = Path(__file__).resolve().parents[2]
MIGRATIONS = sorted(p.name for p in (REPO / "server" / "store" / "migrations").glob("*.sql"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(the wheel, the fresh virtualenv's bin directory)."""
    base = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools writes build/ and *.egg-info into the tree it builds.
    source = base / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".geopush", "build", "*.egg-info", "__pycache__", ".*_cache",
        ".hypothesis"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(base / "dist")],
        check=True, cwd=base, capture_output=True)
    [wheel] = (base / "dist").glob("geopush-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "--no-deps", "--no-index", "-q", str(wheel)], check=True, capture_output=True)
    # The dependencies come from this virtualenv (offline), but geopush itself only from
    # the wheel: a path line in a .pth file adds the directory without running the .pth
    # files in it, so the editable install of the source tree stays out.
    purelib = sysconfig.get_paths()["purelib"]
    fresh_site = next((venv / "lib").glob("python3*/site-packages"))
    (fresh_site / "zz_dependencies.pth").write_text(purelib + "\n")
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import server; print(server.__file__)"],
                           check=True, cwd=base, capture_output=True, text=True).stdout
    assert where.startswith(str(fresh_site)), where
    yield wheel, venv / "bin"


def test_the_wheel_carries_migrations_demo_data_and_the_transparency_page(
    installed: tuple[Path, Path]
) -> None:
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"server/store/migrations/{m}" for m in MIGRATIONS} <= names
    assert "server/examples/call-types/seattle-fire.json" in names
    assert "server/examples/seattle-police-mcpp-areas.geojson" in names
    assert "server/web/static/transparency.html" in names
    assert not any(n.startswith("tests/") for n in names)


def test_the_top_level_sql_folder_is_the_packages_migrations() -> None:
    # sql/ is where the project's layout keeps migrations (a reader finds them with
    # ls); it is a link to server/store/migrations/, so what is added there ships in
    # the wheel and runs from it.
    sql = REPO / "sql"
    assert sql.is_symlink() and sql.resolve() == (REPO / "server" / "store" / "migrations")


async def _fresh_database(dsn: str, name: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.mark.slow
async def test_installed_geopush_migrates_a_fresh_database_and_serves(
    installed: tuple[Path, Path], services: Services, tmp_path: Path
) -> None:
    _, bin_dir = installed
    database_url = await _fresh_database(services.database_url, "geopush_wheel_test")
    port = free_port()
    env = {"PATH": os.environ.get("PATH", ""), "GEOPUSH_DATABASE_URL": database_url,
           "GEOPUSH_REDIS_URL": services.redis_url, "GEOPUSH_HTTP_PORT": str(port),
           "PYTHONWARNINGS": "ignore"}
    migrate = await asyncio.create_subprocess_exec(
        str(bin_dir / "geopush"), "migrate", cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(migrate.communicate(), timeout=120)
    assert migrate.returncode == 0, output.decode()
    assert output.decode().strip() == f"{len(MIGRATIONS)} migration(s) applied"
    conn = await asyncpg.connect(database_url)
    try:
        applied = await conn.fetchval("SELECT count(*) FROM schema_migrations")
        tables = {r["tablename"] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    finally:
        await conn.close()
    assert applied == len(MIGRATIONS)
    assert {"agencies", "incidents", "devices", "deliveries", "transparency_daily"} <= tables

    serve = await asyncio.create_subprocess_exec(
        str(bin_dir / "geopush"), "serve", cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            for _ in range(600):     # the server may take a while on a busy machine
                if serve.returncode is not None:
                    break
                try:
                    async with http.get(f"{base}/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            async with http.get(f"{base}/readyz") as resp:
                assert resp.status == 200
            async with http.get(f"{base}/transparency/any") as resp:
                assert resp.status == 200 and "/v1/transparency/" in await resp.text()
            async with http.get(f"{base}/openapi.json") as resp:
                assert resp.status == 200
    finally:
        if serve.returncode is None:
            serve.terminate()
        await asyncio.wait_for(serve.wait(), timeout=30)
