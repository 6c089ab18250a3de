"""The dashboard's fleet hosts panel in a real browser (headless Chromium), on five namespace
hosts after a real deploy: one row per host with its state and instances, a drained host
shown draining with nothing on it, every value set as text."""

from __future__ import annotations

import asyncio

import pytest
from test_dashboard_browser import page, until  # noqa: F401 (page: the browser fixture)
from test_fleet_deploy import on_fleet

from shipyard.client import AsyncApiClient
from support import SpecMaker, deploy
from support.netns_hosts import NetnsFleet

pytestmark = pytest.mark.timeout(180)


async def test_the_hosts_panel_lists_each_host_with_state_and_instances(
        fleet5: NetnsFleet, api: AsyncApiClient, make_spec: SpecMaker, page: object) -> None:  # noqa: F811
    spec = on_fleet(make_spec, fleet5, "v1", {"total": 5, "max_per_host": 2})
    assert (await deploy(api, spec))["phase"] == "succeeded"
    target = fleet5.hosts[2]
    await api.post(f"/v1/hosts/{target.name}/drain")
    for _ in range(300):
        if not (await api.get(f"/v1/hosts/{target.name}"))["instances"]:
            break
        await asyncio.sleep(0.2)
    await page.goto("/dashboard/")                                              # type: ignore[attr-defined]
    await until(page, "n => document.querySelectorAll('#hosts tbody tr').length === n", 5)
    await until(page, "([h, s]) => document.querySelector(`#hosts tr[data-host='${h}'] .host-state`)"
                      "?.textContent === s", [target.name, "draining"])
    rows = await page.evaluate(                                                 # type: ignore[attr-defined]
        "() => [...document.querySelectorAll('#hosts tbody tr')].map(r => [...r.cells].map(c => c.textContent))")
    by_name = {r[0]: r for r in rows}
    assert set(by_name) == {h.name for h in fleet5.hosts}
    assert by_name[target.name][1:] == [target.address, "draining", "0"]
    others = [by_name[h.name] for h in fleet5.hosts if h is not target]
    assert all(r[2] == "up" and r[3].startswith("shop ") for r in others), rows
    assert sum(int(r[3].split()[1]) for r in others) == 5
    assert page.errors == []                                                    # type: ignore[attr-defined]
