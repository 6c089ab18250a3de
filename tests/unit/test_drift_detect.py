"""scan_service over plain records, without processes: which images it checks and how a
store problem becomes an unknown finding rather than a clean report."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shipyard.drift import ServiceInputs, scan_service
from shipyard.images import BuildInput, Image, ImageStore
from shipyard.rollout.records import ServiceRecord, Slot, SlotState


@pytest.fixture
async def built(tmp: Path) -> tuple[ImageStore, Image]:
    (tmp / "src").mkdir()
    (tmp / "src" / "app.py").write_text("print(1)\n")
    store = ImageStore(tmp / "images")
    return store, await store.build(BuildInput("shop", tmp / "src", run_command=["true"]))


def inputs(tmp: Path, **slots: Slot) -> ServiceInputs:
    svc = ServiceRecord("shop", "127.0.0.1:1", active_slot="blue")
    svc.slots.update(slots)
    return ServiceInputs(svc, [], managed_ports=set(), instances_root=tmp / "instances")


async def test_clean_slot_image(tmp: Path, built: tuple[ImageStore, Image]) -> None:
    store, image = built
    store.materialize(image.id)
    report = await scan_service(inputs(tmp, blue=Slot(SlotState.LIVE, image.id, {"replicas": 0})), store, "full")
    assert report.clean and report.exit_code == 0 and report.files_checked == 1 and report.mode == "full"


async def test_tampered_tree_without_instances_has_no_instance_id(tmp: Path, built: tuple[ImageStore, Image]) -> None:
    store, image = built
    tree = store.materialize(image.id)
    os.chmod(tree, 0o755)
    (tree / "extra.py").write_text("x")
    os.chmod(tree, 0o555)
    report = await scan_service(inputs(tmp, blue=Slot(SlotState.WARM, image.id, {"replicas": 0})), store)
    [f] = report.findings
    assert (f.kind, f.instance_id, f.paths) == ("content", None, ["extra.py"])
    assert report.exit_code == 2


async def test_unknown_image_is_unknown_not_clean(tmp: Path, built: tuple[ImageStore, Image]) -> None:
    store, _ = built
    report = await scan_service(inputs(tmp, blue=Slot(SlotState.LIVE, "f" * 64, {"replicas": 0})), store)
    assert [f.kind for f in report.findings] == ["unknown"]
    assert not report.clean and report.exit_code == 2


async def test_idle_slots_and_unmaterialised_unused_images_are_skipped(tmp: Path,
                                                                      built: tuple[ImageStore, Image]) -> None:
    store, image = built
    report = await scan_service(inputs(tmp, blue=Slot(SlotState.WARM, image.id, {"replicas": 0}),
                                       green=Slot(SlotState.IDLE, "f" * 64)), store)
    assert report.clean, report.to_dict()
