"""TLS with the real daemon, CLI, router (each kind: one suite, two routers) and instances: a spec with `tls` deploys (its preview
checks pass through the TLS listener), curl --cacert reaches the service by name, the
redirect listener answers 308, `shipyard status` shows the fingerprint and notAfter; a
renewed certificate is rotated by the next deploy (tls.rotated); a certificate that cannot
be served makes `deploy` and `validate` exit 2 (`plan` 1) with the reason, and changes nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from test_router_support import ROUTER_KINDS

from shipyard.client import AsyncApiClient
from support import SpecMaker, deploy
from support.certs import Pair, TestCA

pytestmark = pytest.mark.timeout(240)


def sy(*args: str, state: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHIPYARD_HOME": str(state), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "shipyard", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def place(pair: Pair, state_dir: Path) -> None:
    """The spec names certs/shop.pem and certs/shop.key next to it (relative paths)."""
    d = state_dir / "specs" / "certs"
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(pair.cert, d / "shop.pem")
    shutil.copy(pair.key, d / "shop.key")


async def fingerprint(listen: str, ca: TestCA) -> str:
    port = int(listen.rsplit(":", 1)[1])
    ctx = ssl.create_default_context(cafile=str(ca.pem))
    _r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
    try:
        return hashlib.sha256(w.get_extra_info("ssl_object").getpeercert(binary_form=True)).hexdigest()
    finally:
        w.close()


def essentials(status: dict) -> tuple:
    """What a refused deploy must not change (drift scan times and days_left move on their own)."""
    slots = {k: (v["state"], v["image"], sorted((i["id"], i["pid"]) for i in v["instances"]))
             for k, v in status["slots"].items()}
    tls = {k: v for k, v in status["tls"].items() if k != "days_left"}
    return status["live_slot"], status["live_image"], status["table_version"], slots, tls, status["rollout"]


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True, timeout=20)


@pytest.mark.parametrize("kind", ROUTER_KINDS)
async def test_tls_deploy_status_rotation_and_refusals(api: AsyncApiClient, make_spec: SpecMaker, state_dir: Path,
                                                       listen: str, kind: str) -> None:
    from test_router_support import free_port
    ca = TestCA(state_dir / "ca")
    rport = free_port()
    tls = {"cert": "certs/shop.pem", "key": "certs/shop.key", "redirect_http": f"127.0.0.1:{rport}"}
    router = {"router.kind": kind}
    one = ca.issue("one", ("localhost", "127.0.0.1"))
    place(one, state_dir)
    spec = make_spec("v1", tls=tls, **router)

    r1 = await deploy(api, spec)
    assert r1["phase"] == "succeeded", r1        # the preview checks went through the TLS listener
    res = curl("--cacert", str(ca.pem), f"https://localhost:{listen.rsplit(':', 1)[1]}/")
    assert res.returncode == 0 and "hello" in res.stdout.lower(), res
    res = curl("-i", f"http://127.0.0.1:{rport}/products?x=1")
    assert res.stdout.startswith("HTTP/1.1 308"), res
    assert f"location: https://127.0.0.1:{listen.rsplit(':', 1)[1]}/products?x=1" in res.stdout.lower()
    assert await fingerprint(listen, ca) == one.fingerprint

    shown = sy("status", "shop", "--json", state=state_dir)
    assert shown.returncode == 0, shown.stderr
    st = json.loads(shown.stdout)["tls"]
    assert st["fingerprint"] == one.fingerprint and st["redirect_http"] == f"127.0.0.1:{rport}"
    assert st["not_after_iso"].endswith("Z") and 89 < st["days_left"] <= 90
    text = sy("status", "shop", state=state_dir).stdout
    assert one.fingerprint in text and st["not_after_iso"] in text

    # a renewed certificate, deployed with the next release: rotated without a router restart
    two = ca.issue("two", ("localhost", "127.0.0.1"), not_after=dt.timedelta(days=5))
    place(two, state_dir)
    spec2 = make_spec("v2", tls=tls, **router)
    planned = await api.post("/v1/plan", {"spec_path": str(spec2)})
    assert any("expires at" in w and "renew it" in w for w in planned["warnings"]), planned["warnings"]
    checked = sy("validate", str(spec2), state=state_dir)
    assert checked.returncode == 0 and "expires at" in checked.stderr, checked
    r2 = await deploy(api, spec2)
    assert r2["phase"] == "succeeded", r2
    assert await fingerprint(listen, ca) == two.fingerprint
    rotated = [e for e in (await api.get("/v1/services/shop/events"))["events"] if e["kind"] == "tls.rotated"]
    assert len(rotated) == 1 and rotated[0]["data"]["fingerprint"] == two.fingerprint, rotated
    assert rotated[0]["data"]["previous"] == one.fingerprint
    shown = json.loads(sy("status", "shop", "--json", state=state_dir).stdout)
    assert shown["tls"]["fingerprint"] == two.fingerprint and shown["tls"]["days_left"] < 14

    # refusals: exit non-zero with the reason; the router, the record and the rollouts are untouched
    before = (essentials(json.loads(sy("status", "shop", "--json", state=state_dir).stdout)),
              len((await api.get("/v1/services/shop/history"))["rollouts"]))
    expired = ca.issue("old", ("localhost",), not_before=dt.timedelta(days=-20), not_after=dt.timedelta(days=-2))
    other = ca.issue("other", ("localhost",))
    for pair, words in ((expired, "expired at"), (Pair(two.cert, other.key, two.fingerprint), "is not the key")):
        place(pair, state_dir)
        bad_spec = str(make_spec("v1", tls=tls, **router))
        # plan keeps Terraform's convention: every error is 1 (2 means "changes")
        for argv, code in ((["deploy", "-f", bad_spec], 2), (["plan", "-f", bad_spec], 1), (["validate", bad_spec], 2)):
            res = sy(*argv, state=state_dir)
            assert res.returncode == code and words in res.stderr, (argv, res.returncode, res.stderr)
            assert "Traceback" not in res.stderr
    after = (essentials(json.loads(sy("status", "shop", "--json", state=state_dir).stdout)),
             len((await api.get("/v1/services/shop/history"))["rollouts"]))
    assert after == before
    assert await fingerprint(listen, ca) == two.fingerprint
