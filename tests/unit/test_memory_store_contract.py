"""The tests' InMemoryStore is only worth driving the engine on if it answers like the real
store: the same random sequence of writes goes into both, and after every write every read
of both must agree (timestamps the stores take themselves aside)."""

from __future__ import annotations

import inspect
import random
import sqlite3
from pathlib import Path
from typing import Any

from shipyard.rollout.model import Kind, Phase, Rollout
from shipyard.rollout.records import Instance, ServiceRecord, Slot, SlotState
from shipyard.state.sqlite import SqliteStore
from support.memory_store import InMemoryStore

SERVICES = ("shop", "cart", "api")
STATUSES = ("starting", "healthy", "unhealthy", "stopping", "stopped", "dead")


def public(cls: type) -> dict[str, inspect.Signature]:
    return {n: inspect.signature(f) for n, f in vars(cls).items() if callable(f) and not n.startswith("_")}


def test_the_memory_store_has_every_method_of_the_sqlite_store_with_the_same_signature() -> None:
    real, fake = public(SqliteStore), public(InMemoryStore)
    missing = sorted(set(real) - set(fake))
    assert not missing, f"InMemoryStore lacks {missing}"
    differ = {n: (str(real[n]), str(fake[n])) for n in real if str(real[n]) != str(fake[n])}
    assert not differ, differ


def write(rng: random.Random, stores: list[Any], step: int) -> str:
    """One random write, the same into every store; returns what it was (for the failure message)."""
    service = rng.choice(SERVICES)
    op = rng.choice(["service", "delete", "instance", "status", "rollout", "rollout", "begin", "analysis", "event", "event"])
    if op == "service":
        rec = ServiceRecord(service, f"127.0.0.1:{8000 + SERVICES.index(service)}", f"/s/{service}.yaml",
                            rng.choice([None, "blue", "green"]), rng.randrange(5))
        rec.slots["blue"] = Slot(rng.choice([SlotState.LIVE, SlotState.WARM, SlotState.IDLE]), f"img{step}",
                                 {"service": service, "n": step}, rng.choice([None, 12.5]), rng.choice([0.0, 10.0]))
        rec.previous_image_id, rec.previous_spec = rng.choice([(None, None), ("old", {"service": service})])
        for s in stores:
            s.put_service(ServiceRecord(**{**rec.__dict__, "slots": dict(rec.slots)}))
    elif op == "delete":
        for s in stores:
            s.delete_service(service)
    elif op == "instance":
        iid = f"{service}-{rng.choice(['blue', 'green'])}-{rng.randrange(6)}"
        inst = Instance(iid, service, iid.split("-")[1], f"img{rng.randrange(3)}", "127.0.0.1", 4000 + step,
                        100 + step, step, "/l", "/d")
        status = rng.choice(STATUSES)
        for s in stores:
            s.put_instance(inst, status)
    elif op == "status":
        iid, status = f"{service}-{rng.choice(['blue', 'green'])}-{rng.randrange(6)}", rng.choice(STATUSES)
        for s in stores:
            s.set_instance_status(iid, status)
    elif op == "rollout":
        rid = f"{service}-{rng.randrange(1, 6)}"
        r = Rollout(rid, service, rng.choice(list(Kind)), rng.choice(list(Phase)), "green", "blue", "i2", "i1",
                    strategy=rng.choice(["blue_green", "canary"]),
                    # out of seq order, but never equal: SQL leaves the order of ties open
                    created_at=rng.randrange(100) + step / 1000)
        spec = rng.choice([None, {"service": service, "step": step}])
        refused = []     # a second rollout in progress breaks the unique index: both stores refuse it
        for s in stores:
            try:
                s.put_rollout(r, spec)
                refused.append(False)
            except sqlite3.IntegrityError:
                refused.append(True)
        assert len(set(refused)) == 1, f"put_rollout {rid} {r.phase}: refused by (sqlite, memory) {refused}"
    elif op == "begin":
        r = Rollout("", service, Kind.DEPLOY, rng.choice([Phase.BUILDING, Phase.STARTING]), "green", "blue",
                    "i2", "i1", created_at=rng.randrange(100) + step / 1000)
        got = [s.begin_rollout(r, {"service": service, "step": step}) for s in stores]
        assert len({(begun, b.to_dict()["id"]) for begun, b in got}) == 1, f"begin_rollout {service}: {got}"
    elif op == "analysis":
        rid, doc = f"{service}-{rng.randrange(1, 6)}", {"verdicts": [], "step": step}
        for s in stores:
            s.put_analysis(rid, doc)
    else:
        rid = rng.choice([None, f"{service}-{rng.randrange(1, 6)}"])
        kind = rng.choice(["rollout.phase", "traffic.switched", "rollout.created", "instance.started"])
        data = rng.choice([None, {"phase": rng.choice(["failed", "succeeded", "starting"]), "n": step}])
        for s in stores:
            s.add_event(service, kind, f"message {step}", rid, data)
    return f"{op} {service}"


def reads(s: Any) -> dict[str, Any]:
    """Every read the Store offers, with the stores' own clock readings taken out."""
    out: dict[str, Any] = {"services": [(r.name, r.listen, r.spec_path, r.active_slot, r.table_version,
                                         r.slots_json(), r.previous_image_id, r.previous_spec)
                                        for r in s.list_services()]}
    for svc in SERVICES:
        got = s.get_service(svc)
        out[f"get {svc}"] = got.slots_json() if got else None
        out[f"rollouts {svc}"] = [r.to_dict() for r in s.rollouts(svc)]
        out[f"rollouts {svc} 2"] = [r.id for r in s.rollouts(svc, 2)]
        out[f"active {svc}"] = [r.id for r in s.active_rollouts(svc)]
        out[f"seq {svc}"] = s.next_rollout_seq(svc)
        for slot in (None, "blue"):
            for live in (True, False):
                out[f"instances {svc} {slot} {live}"] = [(i, st) for i, st in s.instances(svc, slot, live)]
        for kind in ("rollout.phase", "traffic.switched"):
            e = s.last_event(svc, kind)
            out[f"last {svc} {kind}"] = (e.id, e.rollout_id, e.message, e.data) if e else None
            e = s.last_event(svc, kind, f"{svc}-1")
            out[f"last {svc} {kind} 1"] = e.id if e else None
        for rid in (f"{svc}-{n}" for n in range(1, 6)):
            out[f"rollout {rid}"] = (s.get_rollout(rid), s.rollout_spec(rid), s.get_analysis(rid))
    out["active"] = [r.id for r in s.active_rollouts()]
    out["instances"] = s.instances(live_only=False)
    out["instance shop-blue-1"] = s.instance("shop-blue-1")
    out["events"] = [(e.id, e.service, e.rollout_id, e.kind, e.message, e.data) for e in s.events()]
    out["events paged"] = [e.id for e in s.events("shop", since=3, limit=4)]
    out["events of shop-1"] = [e.id for e in s.events(rollout_id="shop-1")]
    out["counts"] = s.finished_rollout_counts()
    out["finished analysis"] = s.finished_analysis_ids()
    out["audit"] = [(a.id, a.actor, a.action, a.service, a.rollout_id, a.why, a.evidence) for a in s.audit.entries()]
    return out


def test_the_memory_store_answers_every_read_like_sqlite_after_every_write(tmp_path: Path) -> None:
    for seed in range(2):
        real, fake = SqliteStore(tmp_path / f"state{seed}.db"), InMemoryStore()
        rng = random.Random(seed)
        done: list[str] = []
        for step in range(120):
            done.append(write(rng, [real, fake], step))
            want, got = reads(real), reads(fake)
            differ = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
            assert not differ, f"seed {seed}, after {done[-5:]}: (memory, sqlite) {differ}"
        real.close()
