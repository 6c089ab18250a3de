"""`shipyard plan` / `apply` as a user runs them against a real daemon: plan names every
change with its reason and changes nothing; apply converges through the normal rollout;
exit codes follow Terraform (0 no change, 2 changes, 1 error)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from shipyard.devtools.daemonproc import DaemonProcess
from shipyard.devtools.demo import example_dir
from support import SpecMaker
from support.pg import throwaway_db


def sy(*args: str, state: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHIPYARD_HOME": str(state), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "shipyard", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def plan_json(spec: Path, state: Path) -> tuple[int, dict[str, Any]]:
    res = sy("plan", "-f", str(spec), "--json", state=state)
    assert res.returncode in (0, 2), res.stdout + res.stderr
    return res.returncode, json.loads(res.stdout)


def summaries(doc: dict[str, Any]) -> list[str]:
    return [c["summary"] for c in doc["changes"]]


def own_context(state_dir: Path) -> Path:
    """A copy of the example shop's source that the test may edit."""
    ctx = state_dir / "ctx"
    shutil.copytree(example_dir() / "app", ctx, ignore=shutil.ignore_patterns("__pycache__"))
    return ctx


def test_plan_names_each_change_and_apply_converges(daemon: DaemonProcess, make_spec: SpecMaker,
                                                   state_dir: Path) -> None:
    ctx = own_context(state_dir)
    spec = make_spec("v1", "shop", **{"build.context": str(ctx)})

    code, new = plan_json(spec, state_dir)
    assert code == 2 and new["exists"] is False and new["exit_code"] == 2
    assert "new service shop: nothing of it runs yet" in summaries(new)
    assert new["blast_radius"]["max_share"] == 100
    assert sy("status", "--json", state=state_dir).stdout.strip() == "[]", "plan must not change anything"

    applied = sy("apply", "-f", str(spec), state=state_dir)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "succeeded" in applied.stdout
    same = sy("plan", str(spec), state=state_dir)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "unchanged" in same.stdout and "no changes" in same.stdout
    assert "blast radius at 200 req/s" in same.stdout

    catalog = ctx / "shop" / "catalog.json"
    catalog.write_text(catalog.read_text() + "\n")
    code, edited = plan_json(spec, state_dir)
    assert code == 2 and edited["image_changed"]
    assert summaries(edited) == ["file shop/catalog.json changed in the build context"]
    human = sy("plan", "-f", str(spec), state=state_dir)
    assert human.returncode == 2 and "shop/catalog.json" in human.stdout

    spec = make_spec("v1", "shop", replicas=3,
                     **{"build.context": str(ctx), "run.env": {"LOG_LEVEL": "debug"}})
    code, more = plan_json(spec, state_dir)
    assert code == 2
    assert set(summaries(more)) == {"file shop/catalog.json changed in the build context",
                                    "run.env.LOG_LEVEL: info -> debug", "replicas 2 -> 3"}
    live = json.loads(sy("status", "shop", "--json", state=state_dir).stdout)
    assert live["live_image"] == new["image"] and live["live_image"] != more["image"]

    converged = sy("apply", str(spec), "--json", state=state_dir)
    assert converged.returncode == 0, converged.stdout + converged.stderr
    result = json.loads(converged.stdout)
    assert result["result"] == "succeeded" and result["rollout"]["image_id"] == more["image"]
    live = json.loads(sy("status", "shop", "--json", state=state_dir).stdout)
    assert live["live_image"] == more["image"] and len(live["slots"][live["live_slot"]]["instances"]) == 3
    code, after = plan_json(spec, state_dir)
    assert code == 0 and after["changes"] == []
    again = sy("apply", "-f", str(spec), state=state_dir)
    assert again.returncode == 0 and "nothing to do" in again.stdout

    moved = make_spec("v1", "moved", listen="127.0.0.1:1", **{"build.context": str(ctx)})
    code, refused = plan_json(moved, state_dir)
    assert code == 2 and refused["blocked"] and "listen" in refused["blocked"][0]
    res = sy("apply", "-f", str(moved), state=state_dir)
    assert res.returncode == 3 and "apply cannot proceed" in res.stderr


def test_plan_errors_exit_1(make_spec: SpecMaker, state_dir: Path) -> None:
    spec = make_spec("v1")
    res = sy("plan", "-f", str(spec), state=state_dir)
    assert res.returncode == 1 and "no shipyard daemon is running" in res.stderr
    res = sy("plan", str(state_dir / "nope.yaml"), state=state_dir)
    assert res.returncode == 1 and "nope.yaml" in res.stderr and "Traceback" not in res.stderr
    res = sy("plan", state=state_dir)
    assert res.returncode == 1 and "no spec file given" in res.stderr


async def test_plan_reports_pending_migrations_or_unknown(daemon: DaemonProcess, make_spec: SpecMaker,
                                                          state_dir: Path) -> None:
    async with throwaway_db("syplan") as url:
        code, doc = plan_json(make_spec("database/v1", **{"database.url": url}), state_dir)
    assert code == 2
    m = doc["migrations"]
    assert (m["status"], m["expand"], m["held"]) == ("pending", ["0001_products", "0002_orders"], [])
    assert any(s.startswith("2 migration(s) to apply before traffic (expand): 0001_products, 0002_orders")
               for s in summaries(doc))
    code, down = plan_json(make_spec("database/v1", **{"database.url": "postgresql://u:pw1234@127.0.0.1:1/x"}),
                           state_dir)
    assert code == 2 and down["migrations"]["status"] == "unknown"
    assert down["unknown"] and "cannot connect" in down["unknown"][0] and "pw1234" not in json.dumps(down)
