"""A starting instance may still be inside a launcher (pyenv's shim runs bash, then pyenv,
then python): its argv and environment are only compared once it is healthy."""

from __future__ import annotations

import os

from shipyard.drift.detect import ServiceInputs, _process_checks
from shipyard.drift.processes import ExpectedProcess
from shipyard.procfs import process_start_time
from shipyard.rollout.records import Instance, ServiceRecord


def test_starting_instances_are_only_checked_for_being_alive() -> None:
    me = os.getpid()
    inst = Instance(id="shop-blue-1", service="shop", slot="blue", image_id="img", host="127.0.0.1", port=1,
                    pid=me, start_time=process_start_time(me) or 0, log_path="/dev/null", data_dir="/tmp")
    other = ExpectedProcess(["/usr/bin/not-this-program", "--port", "1"], {"PORT": "1"}, frozenset())
    svc = ServiceRecord("shop", "127.0.0.1:9")
    starting = ServiceInputs(service=svc, instances=[(inst, "starting")], expected={inst.id: other})
    healthy = ServiceInputs(service=svc, instances=[(inst, "healthy")], expected={inst.id: other})
    assert _process_checks(starting) == ([], set())
    findings, gone = _process_checks(healthy)
    assert [f.kind for f in findings] == ["process"] and "argv differs" in findings[0].detail
    assert gone == set()
