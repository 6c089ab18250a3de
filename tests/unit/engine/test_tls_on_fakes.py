"""TLS through the real controller on the fakes: the certificate is checked before a deploy
changes anything, installed and put in the table, rotated by a table swap with an event,
shown by status; the router is told the redirect address; the preview checks get a pinned
trust instead of plain http."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest

from shipyard.engine.controller import Controller
from shipyard.errors import CertificateError
from shipyard.rollout.model import Phase
from support.certs import Pair, TestCA
from support.fake_world import BLUE_GREEN, SPEC_HEAD, World, drive

TLS = """\
tls:
  cert: certs/shop.pem
  key: certs/shop.key
  redirect_http: 127.0.0.1:18081
"""


def tls_spec(root: Path, pair: Pair) -> Path:
    (root / "app").mkdir(parents=True, exist_ok=True)
    (root / "certs").mkdir(exist_ok=True)
    shutil.copy(pair.cert, root / "certs" / "shop.pem")
    shutil.copy(pair.key, root / "certs" / "shop.key")
    path = root / "shop.yaml"
    path.write_text(SPEC_HEAD.format(replicas=2) + TLS + BLUE_GREEN)
    return path


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "ca")


def test_deploy_installs_the_certificate_serves_it_and_rotates_it_by_a_table_swap(
        world: World, tmp_path: Path, ca: TestCA) -> None:
    first, second = ca.issue("one"), ca.issue("two")
    spec = tls_spec(tmp_path, first)
    state = tmp_path / "state" / "tls"

    async def body(c: Controller) -> None:
        r = await c.wait((await c.deploy(str(spec), image_id="v1")).id, timeout=3600)
        assert r.phase is Phase.SUCCEEDED, r.reason
        t = world.router.tables["shop"]
        assert t.tls is not None and t.tls.fingerprint == first.fingerprint
        assert t.tls.cert == str(state / f"{first.fingerprint}.pem") and t.tls.key.endswith(".key")
        assert world.router.redirects["shop"] == "127.0.0.1:18081"
        assert world.health.trusts and all(x is not None for x in world.health.trusts)   # pinned, not plain
        st = c.queries.status("shop")["tls"]
        assert st["fingerprint"] == first.fingerprint and 89 < st["days_left"] <= 90
        assert st["redirect_http"] == "127.0.0.1:18081" and "localhost" in st["names"]
        version = t.version

        assert not [x for x in (await c.plan(str(spec)))["changes"] if x["area"] == "tls"]
        tls_spec(tmp_path, second)                       # the user renews the certificate in place
        planned = [x for x in (await c.plan(str(spec)))["changes"] if x["area"] == "tls"]
        assert [(x["old"], x["new"]) for x in planned] == [(first.fingerprint, second.fingerprint)]
        r2 = await c.deploy(str(spec), image_id="v1")
        t2 = world.router.tables["shop"]                 # swapped as the deploy begins, not at its switch
        assert t2.tls is not None and t2.tls.fingerprint == second.fingerprint and t2.version > version
        ev = world.store.last_event("shop", "tls.rotated")
        assert ev is not None and ev.data == {"fingerprint": second.fingerprint, "previous": first.fingerprint,
                                              "not_after": pytest.approx(st["not_after"], abs=300)}
        assert (await c.wait(r2.id, timeout=3600)).phase is Phase.SUCCEEDED
        assert world.router.tables["shop"].tls == t2.tls
        assert c.queries.status("shop")["tls"]["fingerprint"] == second.fingerprint

    drive(world, body)


@pytest.mark.parametrize("bad", ["expired", "mismatch", "not_yet", "encrypted"])
def test_a_certificate_that_cannot_be_served_is_refused_before_anything_changes(
        world: World, tmp_path: Path, ca: TestCA, bad: str) -> None:
    good = ca.issue("good")
    spec = tls_spec(tmp_path, good)
    if bad == "expired":
        pair = ca.issue("bad", not_before=dt.timedelta(days=-9), not_after=dt.timedelta(days=-1))
    elif bad == "not_yet":
        pair = ca.issue("bad", not_before=dt.timedelta(days=2))
    elif bad == "encrypted":
        pair = ca.issue("bad", passphrase=b"pw")
    else:
        pair = Pair(good.cert, ca.issue("other").key, good.fingerprint)

    async def body(c: Controller) -> None:
        r = await c.wait((await c.deploy(str(spec), image_id="v1")).id, timeout=3600)
        assert r.phase is Phase.SUCCEEDED, r.reason
        before = (world.table(), len(world.store.rollouts("shop", 50)), c.queries.status("shop")["tls"],
                  len(world.store.events("shop")), list(world.router.ensured))
        tls_spec(tmp_path, pair)
        for attempt in (lambda: c.deploy(str(spec), image_id="v2"), lambda: c.plan(str(spec))):
            with pytest.raises(CertificateError):
                await attempt()
        after = (world.table(), len(world.store.rollouts("shop", 50)), c.queries.status("shop")["tls"],
                 len(world.store.events("shop")), list(world.router.ensured))
        assert after == before
        assert world.runtime.live("shop") and {i.image_id for i in world.runtime.live("shop")} == {"v1"}

    drive(world, body)


def test_removing_tls_from_the_spec_serves_plain_http_again(world: World, tmp_path: Path, ca: TestCA) -> None:
    spec = tls_spec(tmp_path, ca.issue("one"))

    async def body(c: Controller) -> None:
        assert (await c.wait((await c.deploy(str(spec), image_id="v1")).id, timeout=3600)).phase is Phase.SUCCEEDED
        spec.write_text(spec.read_text().replace(TLS, ""))
        r = await c.deploy(str(spec), image_id="v1")
        assert world.router.tables["shop"].tls is None and world.router.redirects["shop"] is None
        assert world.store.last_event("shop", "tls.disabled") is not None
        assert c.queries.status("shop")["tls"] is None
        assert (await c.wait(r.id, timeout=3600)).phase is Phase.SUCCEEDED
        assert world.health.trusts[-1] is None

    drive(world, body)
