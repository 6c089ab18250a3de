"""`shipyard demo`: the seed's Undo test, live. A real daemon on a temporary state dir
deploys the example shop v1, then v2 blue-green under traffic, rolls back, and tries a
broken v3 that must be refused with traffic untouched. Prints what happened and how
long each step took; stops everything it started unless --keep."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import shipyard
from shipyard.client import AsyncApiClient
from shipyard.devtools.daemonproc import DaemonProcess, cli_argv
from shipyard.devtools.loadgen import Traffic
from shipyard.errors import ShipyardError

console = Console()


def example_dir() -> Path:
    here = Path(shipyard.__file__).resolve().parents[2] / "examples" / "shop"
    if not (here / "v1.yaml").is_file():
        raise ShipyardError(f"the example service is not at {here}",
                            "run the demo from a source checkout of shipyard (make demo)")
    return here


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_specs(src: Path, dest: Path, listen: str, delay: str = "10m", router: str = "embedded") -> dict[str, Path]:
    """Copies of the example specs pointing at this demo's listen address, on `router`'s data plane."""
    dest.mkdir(parents=True, exist_ok=True)
    specs = {}
    for v in ("v1", "v2", "v3"):
        doc: dict[str, Any] = yaml.safe_load((src / f"{v}.yaml").read_text())
        doc["listen"] = listen
        doc.setdefault("router", {})["kind"] = router
        doc.setdefault("build", {})["context"] = str((src / doc["build"].get("context", ".")).resolve())
        doc.setdefault("strategy", {}).setdefault("blue_green", {})["scale_down_delay"] = delay
        path = dest / f"{v}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        specs[v] = path
    return specs


class Report:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str]] = []
        self.ok = True

    def add(self, step: str, result: str, seconds: float | None, good: bool = True) -> None:
        """`result` is data (a rollout's reason, the CLI's words): printed as text, not markup."""
        self.ok &= good
        mark = "[green]✔[/]" if good else "[red]✘[/]"
        step, result = escape(step), escape(result)
        self.rows.append((f"{mark} {step}", result, f"{seconds * 1000:.0f} ms" if seconds is not None else ""))
        console.print(f"{mark} {step}: {result}" + (f" ({seconds * 1000:.0f} ms)" if seconds is not None else ""),
                      highlight=False)


async def _deploy(api: AsyncApiClient, spec: Path) -> tuple[dict[str, Any], float]:
    t0 = time.monotonic()
    r = (await api.post("/v1/deploy", {"spec_path": str(spec)}))["rollout"]
    final = await api.wait_rollout(r["id"], timeout=180)
    return final, time.monotonic() - t0


async def scenario(api: AsyncApiClient, specs: dict[str, Path], url: str, report: Report,
                   state: Path) -> Traffic:
    final, secs = await _deploy(api, specs["v1"])
    report.add("deploy v1 (first release, slot " + final["target_slot"] + ")", final["phase"], secs,
               final["phase"] == "succeeded")
    traffic = Traffic(url, clients=8, pause=0.005)
    traffic.start()
    await asyncio.sleep(1.0)

    mark = time.monotonic()
    final, secs = await _deploy(api, specs["v2"])
    settle = traffic.settled_at("2", mark)
    report.add(f"deploy v2 blue-green -> slot {final['target_slot']}", final["phase"], secs,
               final["phase"] == "succeeded" and settle is not None)
    await asyncio.sleep(1.0)

    # the panic button as a user presses it: the `shipyard rollback` command, timed from its start
    mark = time.monotonic()
    proc = await asyncio.create_subprocess_exec(*cli_argv(), "rollback", "shop", "--state-dir", str(state),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    said = (await proc.communicate())[0].decode(errors="replace").strip()
    call = time.monotonic() - mark
    await asyncio.sleep(1.0)
    settle = traffic.settled_at("1", mark)
    report.add("`shipyard rollback shop` (switch back to the warm slot)",
               f"{said}; every request after {settle * 1000:.1f} ms served by v1" if settle is not None
               else f"{said}; traffic did not return to v1", call,
               proc.returncode == 0 and settle is not None and settle < 1.0)

    mark = time.monotonic()
    final, secs = await _deploy(api, specs["v3"])
    during = traffic.versions(since=mark)
    untouched = set(during) == {"1"}
    report.add("deploy broken v3", f"{final['phase']}: {final['reason']}", secs, final["phase"] == "failed")
    report.add("traffic during the v3 attempt", f"{sum(during.values())} requests, all served by v1"
               if untouched else f"versions seen: {dict(during)}", None, untouched)
    await asyncio.sleep(0.5)
    await traffic.stop()
    failures = traffic.failures()
    report.add("failed requests during the whole demo", f"{len(failures)} of {len(traffic.samples)}", None,
               not failures)
    return traffic


def print_summary(report: Report, traffic: Traffic | None) -> None:
    t = Table("step", "result", "time", title="shipyard demo")
    for row in report.rows:
        t.add_row(*row)
    console.print(t)
    if traffic is not None:
        counts = traffic.versions()
        console.print("requests by release: " + ", ".join(f"v{k}: {n}" for k, n in sorted(counts.items(),
                                                                                          key=lambda kv: str(kv[0]))))


def daemon_url(daemon: DaemonProcess) -> str:
    try:
        return str(json.loads(daemon.paths.api.read_text())["url"])
    except (OSError, ValueError, KeyError):
        return "<see api.json in the state dir>"


async def _run(state: Path, keep: bool, report: Report, router: str = "embedded") -> None:
    port = free_port()
    listen = f"127.0.0.1:{port}"
    specs = write_specs(example_dir(), state / "demo-specs", listen, router=router)
    console.print(f"[bold]shipyard demo[/]: state dir {escape(str(state))}, service shop on http://{listen} "
                  f"({escape(router)} router)")
    daemon = DaemonProcess(state).start()
    api = AsyncApiClient(daemon.paths)
    traffic = None
    try:
        traffic = await scenario(api, specs, f"http://{listen}", report, state)
    finally:
        print_summary(report, traffic)
        if keep:
            console.print(escape(f"\n--keep: daemon (pid {daemon.proc.pid if daemon.proc else '?'}) and shop keep running.\n"
                          f"  SHIPYARD_HOME={state} shipyard status shop\n"
                          f"  curl http://{listen}/\n"
                          f"  dashboard: {daemon_url(daemon)}/dashboard/ (token: {daemon.paths.token})\n"
                          f"  stop: SHIPYARD_HOME={state} shipyard remove shop; kill {daemon.proc.pid if daemon.proc else ''}"))
        else:
            try:
                await api.request("DELETE", "/v1/services/shop")
            except ShipyardError as e:
                console.print(f"[yellow]cleanup: {escape(e.message)}[/]")
            daemon.stop()
        await api.aclose()


def run_demo(keep: bool = False, state_dir: str | None = None, router: str = "embedded") -> int:
    temp = state_dir is None
    state = Path(tempfile.mkdtemp(prefix="shipyard-demo-")) if temp else Path(state_dir).resolve()
    report = Report()
    try:
        asyncio.run(_run(state, keep, report, router))
    finally:
        if temp and not keep:
            shutil.rmtree(state, ignore_errors=True)
    console.print("[green]demo passed[/]" if report.ok else "[red]demo found a problem (see above)[/]")
    return 0 if report.ok else 1
