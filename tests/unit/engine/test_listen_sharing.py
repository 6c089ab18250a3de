"""Who may share a `listen` address: the pure check over specs, and the controller refusing a
deploy before anything changes (on the fakes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.engine.controller import Controller
from shipyard.engine.listen_sharing import clash, same_address
from shipyard.errors import ConflictError
from shipyard.rollout.model import Phase
from shipyard.spec import RouterSpec, Spec, parse_spec
from support.fake_world import BLUE_GREEN, SPEC_HEAD, World, drive


def spec(service: str, domains: str | None = None, listen: str = "127.0.0.1:8080", more: str = "") -> Spec:
    text = f"service: {service}\nlisten: {listen}\nrun: {{command: [app]}}\n{more}"
    if domains is not None:
        text += f"domains: {domains}\n"
    return parse_spec(text, f"{service}.yaml", Path("/tmp"))


def refusal(new: Spec, *others: Spec) -> ConflictError:
    problem = clash(new, list(others))
    assert problem is not None
    return problem


def test_services_naming_distinct_domains_share_an_address() -> None:
    shop = spec("shop", '[shop.test, "*.shop.test"]')
    assert clash(spec("blog", '[blog.test, "*.blog.test", "a.shop.test"]'), [shop]) is None
    assert clash(spec("blog"), [spec("shop", listen="127.0.0.1:8081")]) is None     # another address
    assert clash(shop, [shop]) is None                                             # itself: a redeploy


def test_an_address_taken_without_domains_is_refused_naming_the_other_service() -> None:
    e = refusal(spec("blog", "[blog.test]"), spec("shop"))
    assert e.message == ("127.0.0.1:8080 is already the listen address of service shop, which names no "
                         "domains (it takes every Host there)")
    assert "name `domains:` in both specs" in (e.hint or "")
    assert refusal(spec("blog"), spec("shop", listen="127.0.0.1:08080")).message.startswith(
        "127.0.0.1:8080 is already the listen address of service shop")              # the same address


def test_a_spec_without_domains_is_refused_on_a_shared_address() -> None:
    e = refusal(spec("blog"), spec("shop", "[shop.test]"))
    assert e.message == ("127.0.0.1:8080 is already the listen address of service shop (domains shop.test), "
                         "and this spec names no domains")
    assert "`domains:`" in (e.hint or "")


@pytest.mark.parametrize(("mine", "theirs", "names"), [
    ("[blog.test, shop.test]", "[shop.test]", "shop.test is"),
    ('["*.shop.test"]', '[x.test, "*.shop.test"]', "*.shop.test is"),
    ('[x.test, "*.x.test"]', '["*.x.test", x.test]', "x.test, *.x.test are"),
])
def test_overlapping_domains_are_refused(mine: str, theirs: str, names: str) -> None:
    e = refusal(spec("blog", mine), spec("shop", theirs))
    assert e.message == f"{names} already routed to service shop on 127.0.0.1:8080"
    assert "remove" in (e.hint or "") and "blog" in (e.hint or "") and "shop" in (e.hint or "")


def test_another_router_kind_tls_or_redirect_on_the_address_is_refused() -> None:
    # (the spec refuses domains with kind haproxy for now; the check stands for when it has them)
    haproxy = spec("blog", "[blog.test]").model_copy(update={"router": RouterSpec(kind="haproxy")})
    e = refusal(haproxy, spec("shop", "[shop.test]"))
    assert e.message.endswith("served by router kind embedded; this spec asks for haproxy")
    tls = "tls: {cert: c.pem, key: c.key}\n"
    e = refusal(spec("blog", "[blog.test]", more=tls), spec("shop", "[shop.test]"))
    assert e.message.endswith("blog terminates TLS there and shop does not")
    e = refusal(spec("blog", "[blog.test]", more="tls: {cert: c.pem, key: c.key, redirect_http: 127.0.0.1:81}\n"),
                spec("shop", "[shop.test]", more=tls))
    assert e.message.endswith("whose tls.redirect_http is not set; this spec says 127.0.0.1:81")
    assert clash(spec("blog", "[blog.test]", more=tls), [spec("shop", "[shop.test]", more=tls)]) is None


def test_services_on_one_address_must_agree_on_router_workers() -> None:
    e = refusal(spec("blog", "[blog.test]", more="router: {workers: 2}\n"), spec("shop", "[shop.test]"))
    assert e.message == ("127.0.0.1:8080 is already the listen address of service shop, served by 1 router "
                         "worker(s); this spec asks for 2")
    assert "router.workers: 1 as shop does" in (e.hint or "")
    two = "router: {workers: 2}\n"
    assert clash(spec("blog", "[blog.test]", more=two), [spec("shop", "[shop.test]", more=two)]) is None
    assert clash(spec("blog", more=two), [spec("shop", listen="127.0.0.1:8081")]) is None


def test_same_address() -> None:
    assert same_address("127.0.0.1:8080", "127.0.0.1:08080")
    assert not same_address("127.0.0.1:8080", "127.0.0.2:8080")


# -- through the controller ----------------------------------------------------------------------

def write(root: Path, service: str, domains: str | None) -> Path:
    (root / "app").mkdir(parents=True, exist_ok=True)
    text = SPEC_HEAD.format(replicas=1).replace("service: shop", f"service: {service}") + BLUE_GREEN
    if domains is not None:
        text += f"domains: {domains}\n"
    path = root / f"{service}.yaml"
    path.write_text(text)
    return path


def test_the_controller_shares_by_domains_and_refuses_a_clash_before_anything_changes(
        world: World, tmp_path: Path) -> None:
    shop = write(tmp_path, "shop", '[shop.test, "*.shop.test"]')
    blog = write(tmp_path, "blog", "[blog.test]")
    clashing = write(tmp_path, "cart", "[cart.test, shop.test]")
    bare = write(tmp_path, "wiki", None)

    async def body(c: Controller) -> None:
        for path in (shop, blog):
            r = await c.wait((await c.deploy(str(path), image_id="v1")).id, timeout=3600)
            assert r.phase is Phase.SUCCEEDED, r.reason
        assert world.router.domains == {"shop": ("shop.test", "*.shop.test"), "blog": ("blog.test",)}
        assert world.router.listen["shop"] == world.router.listen["blog"]
        ensured = len(world.router.ensured)
        for path, message in ((clashing, "shop.test is already routed to service shop on 127.0.0.1:18080"),
                              (bare, "127.0.0.1:18080 is already the listen address of service ")):
            with pytest.raises(ConflictError) as info:
                await c.deploy(str(path), image_id="v1")
            assert info.value.message.startswith(message)
            plan = await c.plan(str(path))
            assert any(b.startswith(message) for b in plan["blocked"]), plan["blocked"]
        assert world.store.get_service("cart") is None and world.store.get_service("wiki") is None
        assert world.store.rollouts("cart") == [] and len(world.router.ensured) == ensured   # nothing changed

        # a redeploy that takes a name of another service is refused too
        write(tmp_path, "blog", "[blog.test, x.shop.test, shop.test]")
        with pytest.raises(ConflictError, match="shop.test is already routed to service shop"):
            await c.deploy(str(blog), image_id="v2")
        assert world.router.domains["blog"] == ("blog.test",)

    drive(world, body)


def test_a_restarted_controller_tells_the_router_the_domains_it_served(world: World, tmp_path: Path) -> None:
    shop = write(tmp_path, "shop", '[shop.test, "*.shop.test"]')

    async def first(c: Controller) -> None:
        assert (await c.wait((await c.deploy(str(shop), image_id="v1")).id, timeout=3600)).phase is Phase.SUCCEEDED

    drive(world, first)
    world.router.domains.clear()

    async def second(c: Controller) -> None:
        assert world.router.domains == {"shop": ("shop.test", "*.shop.test")}

    drive(world, second)


def test_preview_checks_name_the_service() -> None:
    from shipyard.engine.preview import preview_host
    assert preview_host(spec("shop", '["*.shop.test", shop.test]')) == "shop.test"
    assert preview_host(spec("shop", '["*.shop.test"]')) == "shipyard-preview.shop.test"
    assert preview_host(spec("shop")) is None
