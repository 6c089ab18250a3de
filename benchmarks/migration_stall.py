#!/usr/bin/env python3
"""Migration stall benchmark (the Database test): how long does a schema migration on a big
table hold up the application's queries, written the way a developer first writes it and
run by a plain migration tool, against the rewrites `shipyard db lint` recommends, applied
through shipyard's runner?

A throwaway database on the local PostgreSQL gets a table of 1,000,000 rows; application
clients keep running point SELECTs and UPDATEs on it while the migration runs; each query's
latency and error is recorded. Two runs, each on a fresh table: (a) the naive set (CREATE
INDEX, ADD COLUMN ... DEFAULT random(), SET NOT NULL; one transaction per file, no
lock_timeout), (b) shipyard's rewrites through `apply_migrations` (lock_timeout, retries).
Every database and connection it opens is dropped/closed at the end, also on failure or
Ctrl-C. Run: .venv/bin/python benchmarks/migration_stall.py"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from benchtools import cpu_times, cpu_use, machine, run_bounded, write_doc_section
from migrationtools import (
    AppWorkload,
    Databases,
    WaitSampler,
    end_state,
    fill_table,
    latency_summary,
    rehearsed_stall,
    slowest,
    stall_in_window,
    timeline,
)

from shipyard.database.apply import apply_migrations
from shipyard.database.connect import connect, redact, server_version
from shipyard.database.lint import lint_scripts, load_catalog
from shipyard.database.sources import Migration, from_directory

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "docs" / "benchmarks.md"
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
NAIVE_RULES = {"0001_owner_index.sql": "create-index-non-concurrent",
               "0002_add_token.sql": "add-column-volatile-default",
               "0003_balance_not_null.sql": "set-not-null"}
"""The finding each naive file must get from the linter."""

NAIVE = {
    "0001_owner_index.sql": "CREATE INDEX accounts_owner_idx ON accounts (owner);\n",
    "0002_add_token.sql": "ALTER TABLE accounts ADD COLUMN token double precision DEFAULT random();\n",
    "0003_balance_not_null.sql": "ALTER TABLE accounts ALTER COLUMN balance SET NOT NULL;\n",
}


def shipyard_set(batch: int, rows: int) -> dict[str, str]:
    """The naive set as the linter's `fix` texts rewrite it. The backfill is the fix's batch
    statement written out once per batch (plus one that finds nothing left) in a no-transaction
    file, so each batch commits on its own and its row locks last one batch. Plain statements,
    not a DO loop: the linter judges each of them (a DO block is `unknown-statement`)."""
    update = (f"UPDATE accounts SET token = random()\n"
              f"  WHERE ctid = ANY (ARRAY(SELECT ctid FROM accounts WHERE token IS NULL LIMIT {batch}));\n")
    return {
        "0001_owner_index.sql": "CREATE INDEX CONCURRENTLY accounts_owner_idx ON accounts (owner);\n",
        "0002_add_token.sql": ("ALTER TABLE accounts ADD COLUMN token double precision;\n"
                               "ALTER TABLE accounts ALTER COLUMN token SET DEFAULT random();\n"),
        "0003_backfill_token.sql": "-- shipyard:no-transaction\n" + update * (-(-rows // batch) + 1),
        "0004_balance_check.sql": ("ALTER TABLE accounts ADD CONSTRAINT accounts_balance_not_null "
                                   "CHECK (balance IS NOT NULL) NOT VALID;\n"),
        "0005_validate_balance_check.sql": ("ALTER TABLE accounts VALIDATE CONSTRAINT "
                                            "accounts_balance_not_null;\n"),
        "0006_balance_not_null.sql": ("ALTER TABLE accounts ALTER COLUMN balance SET NOT NULL;\n"
                                      "ALTER TABLE accounts DROP CONSTRAINT accounts_balance_not_null;\n"),
    }


def write_set(directory: Path, files: dict[str, str]) -> list[Migration]:
    directory.mkdir(parents=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return from_directory(directory)


async def lint(url: str, migrations: list[Migration], assume_lock_timeout: bool) -> list[dict[str, Any]]:
    """`shipyard db lint` against the live catalog (so it knows the table and its size)."""
    conn = await connect(url)
    try:
        version, catalog = await server_version(conn), await load_catalog(conn)
    finally:
        await conn.close()
    found = lint_scripts([m.script for m in migrations], version, assume_lock_timeout=assume_lock_timeout,
                         catalog=catalog)
    return [{"rule": f.rule, "severity": f.severity, "file": Path(f.source).name, "line": f.line,
             "lock": f.lock, "effect": f.effect, "blocking": f.blocking} for f in found]


# -- the two ways to migrate ------------------------------------------------------------------

async def apply_naive(url: str, migrations: list[Migration]) -> dict[str, Any]:
    """What a plain migration tool does: each file in one transaction, no lock_timeout, no retry."""
    conn = await connect(url)
    windows: list[tuple[str, float, float]] = []
    try:
        for m in migrations:
            t0 = time.monotonic()
            async with conn.transaction():
                await conn.execute(m.text.encode())
            windows.append((m.label, t0, time.monotonic()))
    finally:
        await conn.close()
    return {"windows": windows, "lock_timeout_s": None, "retries": 0}


async def apply_through_shipyard(url: str, migrations: list[Migration], lock_timeout: float,
                                 retries: int) -> dict[str, Any]:
    started = time.monotonic()
    ends: list[tuple[str, float]] = []
    messages: list[str] = []

    def log(message: str) -> None:
        messages.append(message)
        if "applied in" in message:
            ends.append((message.split(":", 1)[0], time.monotonic()))

    result = await apply_migrations(url, migrations, phases={m.version: "expand" for m in migrations},
                                    lock_timeout=lock_timeout, retries=retries, log=log)
    windows = [(label, ends[i - 1][1] if i else started, end) for i, (label, end) in enumerate(ends)]
    return {"windows": windows, "lock_timeout_s": lock_timeout, "retries": result.retries,
            "applied": result.applied, "log": messages}


# -- one run ---------------------------------------------------------------------------------

async def one_run(args: argparse.Namespace, dbs: Databases, kind: str,
                  migrations: list[Migration]) -> dict[str, Any]:
    url = await dbs.create(kind)
    name = url.rsplit("/", 1)[1]
    try:
        print(f"[{kind}] filling {args.rows:,} rows in {name} ...", flush=True)
        fill_s = await fill_table(url, args.rows)
        findings = await lint(url, migrations, assume_lock_timeout=kind == "shipyard")
        load = AppWorkload(url, args.rows, clients=args.clients, pause=args.pause_ms / 1000)
        waits = WaitSampler(url)
        rehearsal = None
        try:
            await load.start()
            await waits.start()
            if kind == "naive":         # as a deploy would: `db check` of the index file, under the load
                print(f"[{kind}] rehearsing {migrations[0].label} ...", flush=True)
                rehearsal = await rehearsed_stall(url, migrations[0].script, args.lock_timeout)
            await asyncio.sleep(args.warmup)
            print(f"[{kind}] migrating under {args.clients} clients ...", flush=True)
            cpu0, t0 = cpu_times(), time.monotonic()
            if kind == "naive":
                applied = await apply_naive(url, migrations)
            else:
                applied = await apply_through_shipyard(url, migrations, args.lock_timeout, args.retries)
            t1, cpu1 = time.monotonic(), cpu_times()
            await asyncio.sleep(args.cooldown)
        finally:
            await waits.stop()
            await load.stop()
        state = await end_state(url)
    finally:
        await dbs.drop(name)
    threshold = args.lock_timeout
    queries = load.queries
    during = [q for q in queries if t0 <= q.start <= t1 or (q.start < t0 and q.start + q.latency > t0)]
    worst = max(queries, key=lambda q: q.latency) if queries else None
    return {
        "kind": kind, "database": name, "fill_s": round(fill_s, 2), "lint": findings,
        "migration_s": round(t1 - t0, 3), "cpu_during_migration": cpu_use(cpu0, cpu1),
        "files": [{"file": label, "start_s": round(a - t0, 3), "seconds": round(b - a, 3)}
                  for label, a, b in applied["windows"]],
        "lock_timeout_s": applied["lock_timeout_s"], "retries": applied["retries"],
        "shipyard_log": applied.get("log"),
        "all": latency_summary(queries, threshold),
        "before_migration": latency_summary([q for q in queries if q.start + q.latency < t0], threshold),
        "during_migration": latency_summary(during, threshold),
        "waits_during_migration": waits.shares(t0, t1, args.clients),
        "worst_during": [] if worst is None else [label for label, a, b in applied["windows"]
                                                  if a <= worst.start + worst.latency and worst.start <= b],
        "errors": sorted({q.error for q in queries if q.error})[:10],
        "reconnects": load.reconnects, "workload_s": round(load.stopped - load.started, 2),
        "achieved_qps": round(len(queries) / (load.stopped - load.started), 1),
        "slowest": slowest(queries, t0), "timeline": timeline(queries, t0),
        "end_state": state,
        "rehearsal": None if rehearsal is None else _compare(rehearsal, queries, applied["windows"][0]),
    }


def _compare(rehearsal: dict[str, Any], queries: list[Any], window: tuple[str, float, float]) -> dict[str, Any]:
    """The rehearsal's reported stall of the index file against the writes it really stalled."""
    real = stall_in_window(queries, window[1], window[2])
    ratio = round(rehearsal["seconds"] / real, 2) if real else None
    return {**rehearsal, "file": window[0], "real_s": None if real is None else round(real, 4), "ratio": ratio,
            "within_2x": ratio is not None and 0.5 <= ratio <= 2.0}


# -- report ----------------------------------------------------------------------------------

def summarize(args: argparse.Namespace, runs: dict[str, dict[str, Any]], pg: str) -> dict[str, Any]:
    naive, ship = runs["naive"], runs["shipyard"]
    naive_rules = {f["file"]: f["rule"] for f in naive["lint"] if f["rule"] in NAIVE_RULES.values()}
    naive_flagged = all(naive_rules.get(file) == rule for file, rule in NAIVE_RULES.items())
    ship_clean = ship["lint"] == []          # not even a warning
    ship_max = ship["all"]["latency_ms"]["max"] or 0.0
    naive_max = naive["all"]["latency_ms"]["max"] or 0.0
    goal = ship_max <= args.lock_timeout * 1000 and ship["all"]["errors"] == 0
    return {
        "benchmark": "migration_stall", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {}, "postgresql": pg, "quick": args.quick,
        "options": {"rows": args.rows, "clients": args.clients, "pause_ms": args.pause_ms,
                    "batch": args.batch,
                    "lock_timeout_s": args.lock_timeout, "retries": args.retries, "warmup_s": args.warmup,
                    "cooldown_s": args.cooldown},
        "naive_rules": sorted({f["rule"] for f in naive["lint"]}),
        "naive_flagged": naive_flagged, "shipyard_lint_clean": ship_clean,
        "goal_met": goal, "stall_ratio": round(naive_max / ship_max, 1) if ship_max else None,
        "rehearsal_within_2x": bool(naive["rehearsal"] and naive["rehearsal"]["within_2x"]),
        "runs": runs,
        "ok": goal and naive_flagged and ship_clean and naive["end_state"]["complete"] and naive["rehearsal"]
        and naive["rehearsal"]["within_2x"]
        and ship["end_state"]["complete"],
    }


def _ms(v: float | None) -> str:
    return "-" if v is None else (f"{v / 1000:,.2f} s" if v >= 1000 else f"{v:,.1f} ms")


def _waits(run: dict[str, Any], top: int = 3) -> str:
    shares = list(run["waits_during_migration"].items())[:top]
    return ", ".join(f"{event} {share:.0%}" if share >= 0.005 else f"{event} <1%"
                     for event, share in shares) or "nothing sampled"


def _files(labels: list[str]) -> str:
    return " + ".join(f"`{label}`" for label in labels) or "none (outside the migration)"


def markdown(res: dict[str, Any]) -> str:
    o, m = res["options"], res["machine"]
    naive, ship = res["runs"]["naive"], res["runs"]["shipyard"]
    lt = o["lock_timeout_s"]

    def files(run: dict[str, Any]) -> str:
        return ", ".join(f"`{f['file']}` {f['seconds']:.2f} s" for f in run["files"])

    rows: list[tuple[str, str, str, str]] = [
        ("longest stall of an application query (max latency)", _ms(naive["all"]["latency_ms"]["max"]),
         _ms(ship["all"]["latency_ms"]["max"]), f"<= lock_timeout ({lt:g} s)"),
        ("... while these migration files ran", _files(naive["worst_during"]), _files(ship["worst_during"]),
         ""),
        ("latency p50 / p99 / p99.9, all queries",
         " / ".join(_ms(naive["all"]["latency_ms"][k]) for k in ("p50", "p99", "p999")),
         " / ".join(_ms(ship["all"]["latency_ms"][k]) for k in ("p50", "p99", "p999")), ""),
        ("latency p99 / max before the migration (baseline)",
         " / ".join(_ms(naive["before_migration"]["latency_ms"][k]) for k in ("p99", "max")),
         " / ".join(_ms(ship["before_migration"]["latency_ms"][k]) for k in ("p99", "max")), ""),
        (f"queries slower than {lt:g} s", str(naive["all"]["over_threshold"]),
         str(ship["all"]["over_threshold"]), "0"),
        ("failed application queries", str(naive["all"]["errors"]), str(ship["all"]["errors"]), "0"),
        ("application queries done (queries/s)",
         f"{naive['all']['queries']:,} ({naive['achieved_qps']:,.0f})",
         f"{ship['all']['queries']:,} ({ship['achieved_qps']:,.0f})", ""),
        ("migration wall time", f"{naive['migration_s']:.2f} s", f"{ship['migration_s']:.2f} s", ""),
        ("lock_timeout; retries after a lock timeout", "none; 0", f"{lt:g} s; {ship['retries']}", ""),
        ("what the clients waited on during the migration (share of their time)", _waits(naive),
         _waits(ship), ""),
        ("CPU time busy during the migration", f"{naive['cpu_during_migration']['busy']:.0%}",
         f"{ship['cpu_during_migration']['busy']:.0%}", ""),
    ]
    reh = naive.get("rehearsal") or {}
    if reh:
        rows.append((f"`db check` (default settings) vs real stall of writes, `{reh['file']}`",
                     f"reported {_ms(reh['seconds'] * 1000)} ({reh['basis']}) vs measured "
                     f"{_ms((reh['real_s'] or 0) * 1000)}: ratio {reh['ratio']}", "", "within 2x"))
    verdict = "**met**" if res["goal_met"] else "**not met**"
    ratio = f"{res['stall_ratio']:,.0f}x" if res["stall_ratio"] else "-"
    return "\n".join([
        "```",
        ".venv/bin/python benchmarks/migration_stall.py --write-doc      # about 1 min",
        ".venv/bin/python benchmarks/migration_stall.py --quick          # smoke run, 100,000 rows",
        "```",
        "",
        f"A throwaway database on the local PostgreSQL {res['postgresql']} gets `accounts` with "
        f"{o['rows']:,} rows (id bigint primary key, owner text, balance numeric, opened_at, note). "
        f"{o['clients']} application clients (asyncio + psycopg, autocommit, `statement_timeout` 30 s so a "
        f"stall shows as latency) each loop: a point SELECT by random id, a point UPDATE by random id, "
        f"{o['pause_ms']:g} ms pause. After {o['warmup_s']:g} s of load the migration runs; the load goes on "
        f"{o['cooldown_s']:g} s after it. Each run has a fresh table and database, dropped afterwards.",
        "",
        "- **naive**: " + ", ".join(f"`{n}`" for n in NAIVE_RULES) + ": `CREATE INDEX`, `ADD COLUMN token "
        "double precision DEFAULT random()`, `ALTER COLUMN balance SET NOT NULL`, each file in one "
        "transaction, no lock_timeout (a plain migration tool). `shipyard db lint` flags them: "
        + ", ".join(f"`{r}`" for r in res["naive_rules"]) + ".",
        f"- **shipyard**: the linter's rewrites, applied by `apply_migrations` (lock_timeout {lt:g} s, "
        f"{o['retries']} retries): `CREATE INDEX CONCURRENTLY` in a file of its own; `ADD COLUMN` without "
        f"default + `SET DEFAULT random()`; a no-transaction backfill (the batch UPDATE of "
        f"{o['batch']:,} rows still NULL written out once per batch, each committing on its own); "
        "`CHECK (balance IS NOT NULL) NOT VALID`; `VALIDATE` in the next file; then `SET NOT NULL` "
        "and `DROP` of the check. Lint (with the runner's "
        f"lock_timeout): {'clean' if res['shipyard_lint_clean'] else '**not clean**'}.",
        "",
        f"Run of {res['date']} on {m.get('cpu_model', '?')}, {m.get('nproc', '?')} CPUs "
        f"(1-min load average before the run: {m.get('loadavg_1min_before', 0):.2f}).",
        "",
        "| figure | naive | shipyard | goal |",
        "|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
        "",
        f"Per file, naive: {files(naive)}. Shipyard: {files(ship)}.",
        "",
        f"Longest stall naive / shipyard: {ratio}. Goal (shipyard never stalls a query longer than its "
        f"lock_timeout and fails none): {verdict}. Both runs end with the same schema "
        f"(valid index, every row backfilled, balance NOT NULL, no check left): "
        f"{'yes' if naive['end_state']['complete'] and ship['end_state']['complete'] else '**no**'}.",
        "",
        "Reading the figures: in the naive run, `CREATE INDEX` holds SHARE on the table for the whole "
        "build, so every UPDATE (and the client that sent it) waits; the `ADD COLUMN ... DEFAULT random()` "
        "rewrites every row under ACCESS EXCLUSIVE, so every query waits; `SET NOT NULL` scans under "
        "ACCESS EXCLUSIVE. One query can wait behind more than one of them (`Lock:relation` in the waits "
        "row). In the shipyard run, the DDL holds its strong locks only for catalog changes and gives up "
        "after lock_timeout; what the clients still wait on is mostly their commit's WAL flush "
        "(`LWLock:WALWrite`, `IO:WALSync`) behind the WAL the backfill writes, and now and then a row "
        f"that the backfill's current batch holds (`Lock:transactionid`; one batch is {o['batch']:,} rows, "
        "committed at once). The shipyard migration takes longer end to end (the backfill is most of it) "
        "while the application keeps running. PostgreSQL, the clients and the migration share the "
        "machine's 2 CPUs: the CPU row says how busy they were.",
    ])


# -- main ------------------------------------------------------------------------------------

async def run(args: argparse.Namespace, dbs: Databases, work: Path) -> dict[str, Any]:
    conn = await connect(args.url)
    try:
        pg = (await (await conn.execute("SHOW server_version")).fetchone() or ["?"])[0]
    finally:
        await conn.close()
    sets = {"naive": write_set(work / "naive", NAIVE),
            "shipyard": write_set(work / "shipyard", shipyard_set(args.batch, args.rows))}
    runs = {}
    for kind, migrations in sets.items():
        runs[kind] = await one_run(args, dbs, kind, migrations)
        r = runs[kind]["all"]
        print(f"[{kind}] migration {runs[kind]['migration_s']:.2f} s; "
              f"max latency {_ms(r['latency_ms']['max'])}, "
              f"errors {r['errors']}, queries {r['queries']:,}", flush=True)
        if reh := runs[kind]["rehearsal"]:
            print(f"[{kind}] {reh['file']}: rehearsal reported {reh['seconds']:.3f} s ({reh['basis']}); "
                  f"writes on the real table stalled {reh['real_s']} s; ratio {reh['ratio']}", flush=True)
    return summarize(args, runs, str(pg))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=DEFAULT_URL, help="a database on the server to use (throwaway databases "
                   "are created next to it)")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--clients", type=int, default=8, help="application clients (>= 8 for the acceptance)")
    p.add_argument("--pause-ms", type=float, default=10.0, help="each client's pause after SELECT + UPDATE")
    p.add_argument("--batch", type=int, default=5000, help="rows per backfill batch (shipyard run)")
    p.add_argument("--lock-timeout", type=float, default=1.0,
                   help="shipyard's lock_timeout in seconds (spec default)")
    p.add_argument("--retries", type=int, default=3,
                   help="shipyard's retries after a lock timeout (spec default)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load before the migration")
    p.add_argument("--cooldown", type=float, default=2.0, help="seconds of load after it")
    p.add_argument("--quick", action="store_true", help="smoke run: 100,000 rows; JSON to the temp dir")
    p.add_argument("--output", type=Path, default=None)
    p.add_argument("--write-doc", action="store_true", help=f"rewrite the migration section of {DOC}")
    args = p.parse_args(argv)
    if args.quick:
        if args.write_doc:
            p.error("--quick is a smoke run: its figures do not go into the doc")
        args.rows = min(args.rows, 100_000)
    if args.clients < 1 or args.rows < 1000 or args.batch < 1 or args.lock_timeout <= 0:
        p.error("need --clients >= 1, --rows >= 1000, --batch >= 1 and --lock-timeout > 0")
    output = args.output or (Path(tempfile.gettempdir()) / "migration_stall.quick.json" if args.quick
                             else HERE / "results" / "migration_stall.json")
    load_before = Path("/proc/loadavg").read_text().split()[0]
    dbs = Databases(args.url)

    def drop() -> None:
        try:
            dbs.drop_remaining()
        except psycopg.Error as e:
            print(f"could not drop {', '.join(sorted(dbs.names))} on {redact(args.url)}: {e}",
                  file=sys.stderr)

    res = run_bounded("sybench-mig", lambda work, _children: run(args, dbs, work), cleanup=drop)
    if isinstance(res, int):
        return res
    res["machine"] = {k: v for k, v in machine().items() if k not in ("wrk", "haproxy")}
    res["machine"]["loadavg_1min_before"] = float(load_before)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(res, indent=2) + "\n")
    print("\n" + markdown(res) + "\n")
    print("result:", "PASS" if res["ok"] else
          "FAIL (goal not met, a lint expectation not met, or an incomplete end state)")
    print(f"JSON: {output}")
    if args.write_doc:
        write_doc_section(DOC, "migration", markdown(res))
        print(f"doc: {DOC}")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
