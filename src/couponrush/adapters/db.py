"""PostgreSQL connection pool and the versioned schema migrations (plain SQL files, applied in order)."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.resources
import logging
import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from couponrush.config import redacted

log = logging.getLogger(__name__)

# What our functions accept: a plain connection or one borrowed from a pool.
Connection = asyncpg.Connection | PoolConnectionProxy

_MIGRATION_LOCK = 0x636F75706F6E  # "coupon": one migrator at a time
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def normalize_dsn(url: str) -> str:
    """Accept the URL shapes operators paste (``postgres://``, ``postgresql+asyncpg://``)."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme == "postgres":
        scheme = "postgresql"
    if scheme != "postgresql":
        raise ValueError(f"COUPONRUSH_DATABASE_URL must be a postgresql:// URL, got scheme {parts.scheme!r}")
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, parts.fragment))


def database_name(url: str) -> str:
    return urlsplit(normalize_dsn(url)).path.lstrip("/") or "postgres"


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(normalize_dsn(url))
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


async def create_pool(
    url: str, *, min_size: int = 2, max_size: int = 20, application_name: str = "couponrush"
) -> asyncpg.Pool:
    """A pool that exists even while PostgreSQL does not answer (roles start, readiness says why).

    Connections are made on demand (asyncpg's ``min_size=0`` opens none up front); ``min_size`` of
    them are opened now if PostgreSQL answers, so the first requests don't pay for connecting.
    """
    pool = await asyncpg.create_pool(
        normalize_dsn(url),
        min_size=0,
        max_size=max_size,
        command_timeout=30,
        # Names this process's sessions in pg_stat_activity (the benchmark charges their CPU to the role).
        server_settings={"application_name": application_name},
    )
    assert pool is not None
    try:
        async with asyncio.timeout(5):
            held = [await pool.acquire() for _ in range(min(min_size, max_size))]
            for conn in held:
                await pool.release(conn)
    except Exception as exc:
        log.warning(
            "PostgreSQL at %s (COUPONRUSH_DATABASE_URL) does not answer yet (%s); connecting on demand",
            redacted(url),
            exc,
        )
    return pool


async def connect(url: str) -> asyncpg.Connection:
    """One connection (for migrations and operator tools; services use the pool)."""
    return await asyncpg.connect(normalize_dsn(url))


async def ensure_database(url: str) -> bool:
    """Create the database named in ``url`` if it does not exist. True when it was created."""
    name = database_name(url)
    conn = await asyncpg.connect(_with_database(url, "postgres"))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        quoted = '"' + name.replace('"', '""') + '"'
        await conn.execute(f"CREATE DATABASE {quoted}")
        return True
    finally:
        await conn.close()


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available_migrations() -> list[Migration]:
    folder = importlib.resources.files("couponrush.adapters").joinpath("migrations")
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migration versions must run 1..N without gaps, found {versions}")
    return found


async def migrate(conn: Connection) -> list[Migration]:
    """Apply every migration not yet applied, each in its own transaction. Returns what it applied.

    An applied migration whose file changed since is an error: schema history is append-only.
    """
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    INTEGER PRIMARY KEY,
                   name       TEXT NOT NULL,
                   checksum   TEXT NOT NULL,
                   applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"""
        )
        applied = {
            row["version"]: row["checksum"]
            for row in await conn.fetch("SELECT version, checksum FROM schema_migrations")
        }
        done: list[Migration] = []
        for migration in available_migrations():
            if migration.version in applied:
                if applied[migration.version] != migration.checksum:
                    raise RuntimeError(
                        f"migration {migration.version:04d}_{migration.name} was changed after it was applied"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            log.info("applied migration %04d_%s", migration.version, migration.name)
            done.append(migration)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)


async def pending_migrations(conn: Connection) -> list[Migration]:
    has_table = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    applied: set[int] = set()
    if has_table:
        applied = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    return [m for m in available_migrations() if m.version not in applied]
