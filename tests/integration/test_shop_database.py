"""The example shop in database mode: real shop processes against a throwaway PostgreSQL
database built from examples/shop/migrations, and the shop's standard-library PostgreSQL
client: errors, quoting, and md5 / SCRAM-SHA-256 / cleartext logins, both against the
server's own stored verifiers and end to end on a private cluster whose pg_hba asks for
passwords (the shared server trusts 127.0.0.1, so it never would)."""

from __future__ import annotations

import asyncio
import base64
import glob
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote

import pytest

from shipyard.devtools.demo import free_port
from shipyard.rollout.records import Instance, LaunchSpec
from shipyard.runtime.health import wait_healthy
from shipyard.runtime.local import LocalRuntime, read_proc_stat
from support.pg import ADMIN_URL, throwaway_db

pytestmark = pytest.mark.timeout(60)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "shop"
MIGRATIONS = EXAMPLE / "migrations"
CATALOG = json.loads((EXAMPLE / "app" / "shop" / "catalog.json").read_text())
LEGACY_CODES = {1: "DC-001", 2: "SB-002", 3: "BC-003", 4: "SF-004", 5: "RP-005"}
V1 = 'version = "1"\ngreeting = "hello"\nproduct_legacy_column = "legacy_code"\n'
V2 = 'version = "2"\ngreeting = "hello from v2"\norder_note_column = "note"\n'


def load_pg_client() -> ModuleType:
    """shop/pg.py has no imports from its package: load it alone, without putting `shop` on sys.path."""
    spec = importlib.util.spec_from_file_location("shop_pg_under_test", EXAMPLE / "app" / "shop" / "pg.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


pg = load_pg_client()


def psql(url: str, *args: str) -> str:
    done = subprocess.run(
        ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url, *args],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert done.returncode == 0, f"psql {args}: {done.stderr}"
    return done.stdout


def migrate(url: str, first: str = "0001", last: str = "0004") -> None:
    """Each file as the runner applies it: one transaction unless it says shipyard:no-transaction."""
    for path in sorted(MIGRATIONS.glob("*.sql")):
        if first <= path.name[:4] <= last:
            single = [] if "shipyard:no-transaction" in path.read_text() else ["-1"]
            psql(url, *single, "-f", str(path))


@pytest.fixture
async def database() -> AsyncIterator[str]:
    """A uniquely named, empty database on the shared server; dropped afterwards with the shops' sessions."""
    async with throwaway_db("shop") as url:
        yield url


# -- shop processes -------------------------------------------------------------------------------

ShopFactory = Callable[[str, str], Awaitable[Instance]]


@pytest.fixture
async def start_shop() -> AsyncIterator[ShopFactory]:
    """start_shop(release_toml, database_url) -> a healthy shop instance (a real process, real port)."""
    root = Path(tempfile.mkdtemp(prefix="sy-shopdb"))
    runtime = LocalRuntime()
    started: list[Instance] = []

    async def start(release: str, database_url: str) -> Instance:
        n = len(started)
        tree = root / f"tree-{n}"
        shutil.copytree(EXAMPLE / "app", tree, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        (tree / "release.toml").write_text(release)
        inst = await runtime.start(LaunchSpec(
            instance_id=f"shop-db-{n}", service="shop", slot="green", image_id=f"img-{n}", tree=tree,
            command=["python3", "-m", "shop", "--port", "${PORT}"], env={"DATABASE_URL": database_url},
            instance_dir=root / f"inst-{n}",
        ))
        started.append(inst)
        ok, why = await wait_healthy(inst, path="/healthz", interval=0.05, timeout=2, healthy_threshold=1,
                                     deadline_s=15, is_alive=runtime.is_alive, exit_code=runtime.exit_code)
        assert ok, why
        return inst

    try:
        yield start
    finally:
        for inst in started:
            stat = read_proc_stat(inst.pid)
            if stat is not None and stat.start_time == inst.start_time:
                try:
                    os.killpg(inst.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        deadline = time.monotonic() + 5
        while any(runtime.is_alive(i) for i in started) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        shutil.rmtree(root, ignore_errors=True)


async def http(inst: Instance, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", inst.port)
    try:
        data = b"" if body is None else json.dumps(body).encode()
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return status, json.loads(payload) if b"application/json" in head else payload.decode()


def catalog_as_served(legacy: bool) -> list[dict[str, Any]]:
    rows = [{"id": p["id"], "name": p["name"], "price": p["price"]} for p in CATALOG]
    return [{**r, "code": LEGACY_CODES[r["id"]]} for r in rows] if legacy else rows


# -- the shop against PostgreSQL ----------------------------------------------------------------------


async def test_products_and_orders_live_in_postgresql(database: str, start_shop: ShopFactory) -> None:
    migrate(database)
    shop = await start_shop(V1, database)
    status, home = await http(shop, "GET", "/")
    assert status == 200 and home["database"] == "postgresql" and home["version"] == "1"
    assert await http(shop, "GET", "/products") == (200, catalog_as_served(legacy=True))

    psql(database, "-c", "UPDATE products SET name = 'Deck chair (teak)', price = 59.5 WHERE id = 1")
    status, products = await http(shop, "GET", "/products")
    assert status == 200 and products[0] == {"id": 1, "name": "Deck chair (teak)", "price": 59.5, "code": "DC-001"}
    assert await http(shop, "GET", "/products/3") == (
        200, {"id": 3, "name": "Brass compass", "price": 89.9, "code": "BC-003"})
    for missing in ("/products/99", "/products/abc", "/products/99999999999999999999999"):
        assert (await http(shop, "GET", missing))[0] == 404

    status, order = await http(shop, "POST", "/orders", {"product": 2, "quantity": 3})
    assert status == 201 and order["product"] == 2 and order["quantity"] == 3 and order["total"] == 73.5
    stored = psql(database, "-c", f"SELECT product_id, quantity, total, note IS NULL FROM orders WHERE id = {order['order']}")
    assert stored == "2|3|73.50|t\n"
    assert (await http(shop, "POST", "/orders", {"product": 99, "quantity": 1}))[0] == 404
    assert (await http(shop, "POST", "/orders", {"product": 1, "quantity": 0}))[0] == 400
    assert (await http(shop, "POST", "/orders", {"quantity": 1}))[0] == 400
    assert psql(database, "-c", "SELECT count(*) FROM orders") == "1\n"
    assert await http(shop, "GET", "/healthz") == (200, "ok\n")


async def test_the_note_column_gets_user_text_verbatim(database: str, start_shop: ShopFactory) -> None:
    migrate(database)
    shop = await start_shop(V2, database)
    note = "O'Brien\\'); DROP TABLE orders; -- $$ \u20ac\nsecond line"
    status, order = await http(shop, "POST", "/orders", {"product": "4", "quantity": 2, "note": note})
    assert status == 201 and order["total"] == 70.0
    assert psql(database, "-c", f"SELECT note FROM orders WHERE id = {order['order']}") == note + "\n"
    assert (await http(shop, "POST", "/orders", {"product": 4, "note": 7}))[0] == 400
    assert (await http(shop, "POST", "/orders", {"product": 4, "note": "nul\u0000byte"}))[0] == 400
    assert psql(database, "-c", "SELECT count(*) FROM orders") == "1\n"


async def test_a_schema_the_release_cannot_read_answers_500_and_the_shop_survives(
    database: str, start_shop: ShopFactory
) -> None:
    migrate(database)
    old = await start_shop('version = "1"\n', database)  # reads products.name
    assert (await http(old, "GET", "/products"))[0] == 200

    psql(database, "-c", "ALTER TABLE products RENAME COLUMN name TO title")
    for path in ("/products", "/products/1"):
        assert await http(old, "GET", path) == (500, {"error": 'database: column "name" does not exist'})
    assert (await http(old, "GET", "/"))[0] == 200 and (await http(old, "GET", "/healthz"))[0] == 200
    renamed = await start_shop('version = "2"\nproduct_name_column = "title"\n', database)
    assert await http(renamed, "GET", "/products") == (200, catalog_as_served(legacy=False))

    psql(database, "-c", "ALTER TABLE products RENAME COLUMN title TO name")
    assert await http(old, "GET", "/products") == (200, catalog_as_served(legacy=False))  # same pool, usable
    psql(database, "-c", "DROP TABLE orders")
    assert await http(old, "POST", "/orders", {"product": 1}) == (
        500, {"error": 'database: relation "orders" does not exist'})
    assert (await http(old, "GET", "/products/2"))[0] == 200


async def test_expand_keeps_v1_working_and_contract_breaks_only_v1(database: str, start_shop: ShopFactory) -> None:
    migrate(database, last="0002")
    v1 = await start_shop(V1, database)
    assert (await http(v1, "POST", "/orders", {"product": 1}))[0] == 201
    migrate(database, first="0003", last="0004")  # expand: note column and index, v1 never names them
    v2 = await start_shop(V2, database)
    assert (await http(v1, "GET", "/products"))[0] == 200
    assert (await http(v1, "POST", "/orders", {"product": 1}))[0] == 201
    assert (await http(v2, "POST", "/orders", {"product": 1, "note": "gift"}))[0] == 201

    migrate(database, first="0005", last="0005")  # contract
    assert await http(v1, "GET", "/products") == (500, {"error": 'database: column "legacy_code" does not exist'})
    assert await http(v2, "GET", "/products") == (200, catalog_as_served(legacy=False))
    assert psql(database, "-c", "SELECT count(*), count(note) FROM orders") == "3|1\n"


async def test_database_down_or_sessions_killed(database: str, start_shop: ShopFactory) -> None:
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    shop = await start_shop('version = "1"\n', nowhere)  # starts and is healthy without its database
    assert (await http(shop, "GET", "/"))[0] == 200
    status, body = await http(shop, "GET", "/products")
    assert status == 500 and body["error"].startswith("database: cannot connect to 127.0.0.1:")

    migrate(database)
    live = await start_shop('version = "1"\n', database)
    assert (await http(live, "GET", "/products"))[0] == 200
    name = database.rsplit("/", 1)[1]
    killed = psql(ADMIN_URL, "-c", "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                  f"WHERE datname = '{name}' AND application_name = 'shop'")
    assert int(killed) >= 1
    assert await http(live, "GET", "/products") == (200, catalog_as_served(legacy=False))  # reconnected


# -- the client: errors and quoting ----------------------------------------------------------------


async def test_an_error_leaves_the_connection_usable() -> None:
    conn = await pg.Connection.open(pg.parse_url(ADMIN_URL))
    try:
        with pytest.raises(pg.PgError) as caught:
            await conn.query("SELECT 1; SELECT 1/0; SELECT 3")
        assert (caught.value.sqlstate, caught.value.message) == ("22012", "division by zero")
        with pytest.raises(pg.PgError) as caught:
            await conn.query("SELEC 1")
        assert caught.value.sqlstate == "42601"
        result = await conn.query("SELECT 2 AS two, NULL::text AS nothing")
        assert (result.columns, result.rows, result.command) == (["two", "nothing"], [["2", None]], "SELECT 1")
        assert not conn.in_transaction
    finally:
        conn.close()


@pytest.mark.parametrize("conforming", ["on", "off"])
async def test_quote_literal_round_trips_through_the_server(conforming: str) -> None:
    conn = await pg.Connection.open(pg.parse_url(ADMIN_URL))
    try:
        await conn.query(f"SET standard_conforming_strings = {conforming}")
        texts = ["plain", "it's", "back\\slash", "\\'; SELECT 1; --", "$$dollar$$", "\u20ac\n\t\u00fc", "", "E'x'"]
        for text in texts:
            assert (await conn.query(f"SELECT {pg.quote_literal(text)}")).rows == [[text]]
        assert (await conn.query(f"SELECT 1 - {pg.quote_literal(-5)}, {pg.quote_literal(None)} IS NULL")).rows == [
            ["6", "t"]]
        column = pg.quote_ident('we"ird')
        await conn.query(f"CREATE TEMP TABLE t ({column} text)")
        assert (await conn.query(f"SELECT {column} FROM t")).columns == ['we"ird']
    finally:
        conn.close()
    with pytest.raises(ValueError):
        pg.quote_literal("nul\0")
    with pytest.raises(TypeError):
        pg.quote_literal(object())


def test_url_parsing() -> None:
    params = pg.parse_url("postgresql://al%40ice:p%3Aw@db.example:6543/shop?application_name=x&connect_timeout=2",
                          env={})
    assert (params.user, params.password, params.host, params.port, params.database, params.timeout) == (
        "al@ice", "p:w", "db.example", 6543, "shop", 2.0)
    assert ("application_name", "x") in params.settings
    assert pg.parse_url("postgresql://bob@h/db", env={"PGPASSWORD": "from-env"}).password == "from-env"
    assert pg.parse_url("postgresql://bob@/db?host=/run/pg", env={}).host == "/run/pg"
    for bad in ("mysql://x@h/db", "postgresql://x@h/db?sslmode=require"):
        with pytest.raises(ValueError):
            pg.parse_url(bad, env={})


# -- the client: password logins -------------------------------------------------------------------


def test_scram_reproduces_the_rfc7677_example() -> None:
    scram = pg.Scram("pencil", nonce="rOprNGfwEbeRWgbNEkqO", user="user")
    assert scram.first() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    assert scram.final(server_first) == (
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    scram.verify(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    with pytest.raises(pg.PgError):
        scram.verify(b"v=" + base64.b64encode(b"\0" * 32))
    with pytest.raises(pg.PgError):
        pg.Scram("pencil", nonce="abc").final(b"r=xyz123,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")


def test_md5_response_is_the_salted_hash_of_the_stored_hash() -> None:
    salt = bytes([0x9A, 0x01, 0x7F, 0xFF])
    stored = hashlib.md5(b"secretalice").hexdigest()
    assert pg.md5_verifier("alice", "secret") == "md5" + stored
    assert pg.md5_response("alice", "secret", salt) == b"md5" + hashlib.md5(stored.encode() + salt).hexdigest().encode()


@pytest.fixture
def password_roles() -> Iterator[dict[str, str]]:
    """Two roles on the shared server, one stored as SCRAM and one as md5; dropped afterwards."""
    tag = uuid.uuid4().hex[:10]
    roles = {"scram-sha-256": f"shop_scram_{tag}", "md5": f"shop_md5_{tag}"}
    try:
        for method, role in roles.items():
            psql(ADMIN_URL, "-c", f"SET password_encryption = '{method}'",
                 "-c", f"CREATE ROLE {role} LOGIN PASSWORD 'tide-{tag}'")
        yield {role: f"tide-{tag}" for role in roles.values()}
    finally:
        for role in roles.values():
            psql(ADMIN_URL, "-c", f"DROP ROLE IF EXISTS {role}")


def test_client_computes_the_servers_own_verifiers(password_roles: dict[str, str]) -> None:
    for role, password in password_roles.items():
        stored = psql(ADMIN_URL, "-c", f"SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'").strip()
        if role.startswith("shop_md5_"):
            assert stored == pg.md5_verifier(role, password)
            continue
        method, iterations_salt, keys = stored.split("$")
        iterations, salt = iterations_salt.split(":")
        stored_key, server_key = keys.split(":")
        assert method == "SCRAM-SHA-256"
        assert pg.scram_keys(password, base64.b64decode(salt), int(iterations)) == (
            base64.b64decode(stored_key), base64.b64decode(server_key))
        assert pg.scram_keys(password + "x", base64.b64decode(salt), int(iterations))[0] != base64.b64decode(stored_key)


def postgres_program(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return found[-1] if found else shutil.which(name)


PRIVATE_ROLES = {"shop_md5": ("md5", "md5 p@ss:w/rd"), "shop_scram": ("scram-sha-256", "scr@m %secret"),
                 "shop_plain": ("password", "plain-text")}


@pytest.fixture(scope="module")
def private_cluster() -> Iterator[str]:
    """A PostgreSQL cluster of our own whose pg_hba asks these roles for passwords: initdb, start,
    and in the end stop (immediate) and delete. Yields its host:port."""
    initdb, pg_ctl = postgres_program("initdb"), postgres_program("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("initdb/pg_ctl not installed: cannot run a cluster that asks for passwords")
    root = Path(tempfile.mkdtemp(prefix="sy-pgauth"))
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # initdb refuses root
    if as_postgres:
        shutil.chown(root, "postgres")
    data, port = root / "data", free_port()
    try:
        subprocess.run([*as_postgres, initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"],
                       check=True, capture_output=True, timeout=60)
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{root}'\n"
                       "fsync = off\nmax_connections = 20\n")
        hba = ["local all all trust", "host all postgres 127.0.0.1/32 trust"]
        hba += [f"host all {role} 127.0.0.1/32 {method}" for role, (method, _) in PRIVATE_ROLES.items()]
        (data / "pg_hba.conf").write_text("\n".join(hba) + "\n")
        subprocess.run([*as_postgres, pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w", "-t", "30", "start"],
                       check=True, capture_output=True, timeout=60)
        admin = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        for role, (method, password) in PRIVATE_ROLES.items():
            stored_as = "md5" if method == "md5" else "scram-sha-256"
            psql(admin, "-c", f"SET password_encryption = '{stored_as}'",
                 "-c", f"CREATE ROLE {role} LOGIN PASSWORD {pg.quote_literal(password)}")
        psql(admin, "-c", "CREATE DATABASE shop OWNER shop_scram")
        yield f"127.0.0.1:{port}"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*as_postgres, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=60, check=False)
        shutil.rmtree(root, ignore_errors=True)


async def test_password_logins_on_a_cluster_that_asks_for_them(private_cluster: str) -> None:
    for role, (method, password) in PRIVATE_ROLES.items():
        url = f"postgresql://{role}:{quote(password, safe='')}@{private_cluster}/postgres"
        conn = await pg.Connection.open(pg.parse_url(url))
        try:
            assert (await conn.query("SELECT current_user")).rows == [[role]], method
        finally:
            conn.close()
        bare = f"postgresql://{role}@{private_cluster}/postgres"
        conn = await pg.Connection.open(pg.parse_url(bare, env={"PGPASSWORD": password}))
        conn.close()
        with pytest.raises(pg.PgError) as caught:
            await pg.Connection.open(pg.parse_url(bare, env={"PGPASSWORD": password + "!"}))
        assert caught.value.sqlstate == "28P01" and role in caught.value.message
        with pytest.raises(pg.PgError) as caught:
            await pg.Connection.open(pg.parse_url(bare, env={}))
        assert "PGPASSWORD" in caught.value.message


async def test_the_shop_logs_in_with_scram(private_cluster: str, start_shop: ShopFactory) -> None:
    admin = f"postgresql://postgres@{private_cluster}/shop"
    psql(admin, "-c", "SET ROLE shop_scram", "-f", str(MIGRATIONS / "0001_products.sql"))
    _, password = PRIVATE_ROLES["shop_scram"]
    shop = await start_shop(V1, f"postgresql://shop_scram:{quote(password, safe='')}@{private_cluster}/shop")
    assert await http(shop, "GET", "/products") == (200, catalog_as_served(legacy=True))
