"""The rehearsal's extrapolation of lock-holding times: fits through two samples, their
bounds, the choice of model per statement, the full-copy bound, and that every stall figure
of a scaled report says whether it was measured or extrapolated."""

from __future__ import annotations

import math

import pytest

from shipyard.database.extrapolate import CONSTANT, LINEAR, NLOGN, effective_rows, extrapolate
from shipyard.database.observe import CheckReport, StatementObservation
from shipyard.database.probes import ProbeStats
from shipyard.database.scaling import (
    EXTRAPOLATED,
    FULL,
    FULL_COPY_MAX_BYTES,
    FULL_COPY_MAX_ROWS,
    SCHEMA_ONLY,
    Sizing,
    TableSize,
    model_of,
    plan_sizing,
    scale_report,
)
from shipyard.database.statements import parse_script


def test_a_linear_cost_is_recovered_exactly() -> None:
    # t = 0.01 + 2e-6 * n
    fit = extrapolate(10_000, 0.03, 40_000, 0.09, 1_000_000, LINEAR)
    assert fit.model == LINEAR
    assert fit.seconds == pytest.approx(2.01)
    assert fit.fixed == pytest.approx(0.01)


def test_an_n_log_n_cost_is_recovered_exactly() -> None:
    def t(n: float) -> float:
        return 0.004 + 1e-7 * n * math.log(n)

    fit = extrapolate(25_000, t(25_000), 100_000, t(100_000), 1_000_000, NLOGN)
    assert fit.seconds == pytest.approx(t(1_000_000), rel=1e-3)
    # n log n grows faster than the straight line through the same two points
    assert fit.seconds > extrapolate(25_000, t(25_000), 100_000, t(100_000), 1_000_000, LINEAR).seconds


def test_a_time_that_does_not_grow_is_constant_not_fitted() -> None:
    fit = extrapolate(25_000, 0.003, 100_000, 0.004, 10_000_000, LINEAR)
    assert (fit.model, fit.seconds) == (CONSTANT, 0.004)
    # noise that shrinks with size never gives a negative or smaller estimate
    fit = extrapolate(25_000, 0.2, 100_000, 0.1, 10_000_000, LINEAR)
    assert (fit.model, fit.seconds) == (CONSTANT, 0.2)


def test_the_estimate_is_never_below_what_was_measured() -> None:
    # a large fixed cost and a small slope: extrapolating a little past n2 stays >= t2
    fit = extrapolate(1_000, 0.5, 2_000, 0.51, 2_001, LINEAR)
    assert fit.seconds >= 0.51


def test_a_fit_that_needs_a_negative_fixed_cost_scales_the_larger_sample_instead() -> None:
    # 10x the time for 4x the rows: the straight line through both would cross zero above n = 0
    fit = extrapolate(25_000, 0.009, 100_000, 0.094, 1_000_000, LINEAR)
    assert fit.fixed == 0.0
    assert fit.seconds == pytest.approx(0.94)


def test_a_target_within_the_sample_was_measured() -> None:
    fit = extrapolate(1_000, 0.1, 4_000, 0.4, 3_000, LINEAR)
    assert (fit.model, fit.seconds) == (CONSTANT, 0.4)


@pytest.mark.parametrize("args", [(0, 0.1, 10, 0.2, 100, LINEAR), (10, 0.1, 10, 0.2, 100, LINEAR),
                                  (10, 0.1, 20, 0.2, 100, "cubic"), (10, -0.1, 20, 0.2, 100, LINEAR)])
def test_bad_inputs_are_refused(args: tuple) -> None:
    with pytest.raises(ValueError):
        extrapolate(*args)


def test_wide_live_rows_count_for_more_than_their_number() -> None:
    assert effective_rows(1_000_000, 100 * 2**20, 100_000, 10 * 2**20) == 1_000_000
    assert effective_rows(1_000_000, 400 * 2**20, 100_000, 10 * 2**20) == 4_000_000
    assert effective_rows(500, 0, 0, 0) == 500


def test_full_copy_up_to_the_bound_then_two_samples_below_the_table() -> None:
    small = plan_sizing({"a": TableSize(FULL_COPY_MAX_ROWS, 10 * 2**20)}, 1000)
    assert (small.mode, small.large) == (FULL, FULL_COPY_MAX_ROWS)
    big = plan_sizing({"a": TableSize(200_000, 20 * 2**20), "b": TableSize(10, 8192)}, 1000)
    assert big.mode == EXTRAPOLATED and 0 < big.small < big.large < 200_000
    wide = plan_sizing({"a": TableSize(50_000, FULL_COPY_MAX_BYTES + 1)}, 1000)
    assert wide.mode == EXTRAPOLATED and wide.large < 50_000
    # a user who asks for a big sample gets a full copy up to it
    assert plan_sizing({"a": TableSize(1_000_000, 100 * 2**20)}, 1_000_000).mode == FULL
    assert plan_sizing({"a": TableSize(10, 8192)}, 0).mode == SCHEMA_ONLY


def test_index_builds_are_fitted_n_log_n_and_scans_linearly() -> None:
    nodes = [s.node for s in parse_script(
        "CREATE INDEX i ON t (a);\nALTER TABLE t ADD PRIMARY KEY (id);\n"
        "ALTER TABLE t ALTER COLUMN a SET NOT NULL;\nUPDATE t SET a = 1;\n", "m.sql").statements]
    assert [model_of(n) for n in nodes] == [NLOGN, NLOGN, LINEAR, LINEAR]


def _report(held: float, probe_stall: float, max_stall: float = 1.0) -> CheckReport:
    obs = StatementObservation(source="0001.sql", line=1, statement="CREATE INDEX i ON t (a);",
                               in_transaction=True, locks={"t": ["SHARE"]}, locks_held=held)
    probes = [ProbeStats("t", "write", longest_stall=probe_stall), ProbeStats("t", "read", longest_stall=0.001)]
    return CheckReport(ok=True, statements=[obs], probes=probes, reasons=[], lock_timeout=1.0,
                       max_stall=max_stall, duration=1.0)


def test_a_scaled_report_says_extrapolated_and_fails_over_max_stall() -> None:
    scripts = [parse_script("CREATE INDEX i ON t (a);\n", "0001.sql")]
    sizing = Sizing(EXTRAPOLATED, {"t": TableSize(1_000_000, 0)}, small=25_000, large=100_000)
    large, small = _report(0.100, 0.098), _report(0.025, 0.024)
    scale_report(large, small, scripts, sizing, {"t": 25_000}, {"t": 100_000}, {})
    writes = next(e for e in large.estimates if e["kind"] == "write")
    assert writes["seconds"] > 1.0
    assert "extrapolated from 25,000 and 100,000 rows to the live table's 1,000,000 rows" in writes["basis"]
    assert writes["measured_on_copy"] == 0.098
    assert "extrapolated" in large.basis
    assert not large.ok and any("would be blocked" in r for r in large.reasons)
    reads = next(e for e in large.estimates if e["kind"] == "read")
    assert "extrapolated" not in reads["basis"]        # SHARE does not block reads: nothing to carry


def test_a_full_copy_report_says_measured() -> None:
    scripts = [parse_script("CREATE INDEX i ON t (a);\n", "0001.sql")]
    sizing = Sizing(FULL, {"t": TableSize(50_000, 0)}, large=FULL_COPY_MAX_ROWS)
    report = _report(0.05, 0.048)
    scale_report(report, None, scripts, sizing, {}, {"t": 50_000}, {})
    assert report.basis == "measured on the full copy"
    assert all(e["basis"] == "measured on the full copy" for e in report.estimates)
    assert report.statements[0].locks_held_live == 0.05 and report.ok


def test_a_statement_without_a_second_measurement_is_not_passed_off_as_production() -> None:
    scripts = [parse_script("CREATE INDEX i ON t (a);\n", "0001.sql")]
    sizing = Sizing(EXTRAPOLATED, {"t": TableSize(1_000_000, 0)}, small=25_000, large=100_000)
    report = _report(0.100, 0.098)
    scale_report(report, None, scripts, sizing, {}, {"t": 100_000}, {})     # the small run gave nothing
    writes = next(e for e in report.estimates if e["kind"] == "write")
    assert writes["seconds"] == 0.098
    assert writes["basis"].startswith("the copy's probe only: 0001.sql:1 not estimated")
    assert report.statements[0].locks_held_live is None
