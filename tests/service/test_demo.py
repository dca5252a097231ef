"""`theranode demo` output: VOI doses beside the truth, with what explains the gap."""

from __future__ import annotations

from types import SimpleNamespace

from tests.dicomio.result_records import cycle_result, identity, source_for_cycle
from tests.part10_bytes import read_back
from theranode.dicomio.part10 import encode
from theranode.dicomio.pdf_report import plain_number
from theranode.dicomio.sr import write_cycle_sr
from theranode.service.cli.demo import comparison_lines


def test_comparison_lines_show_dose_truth_difference_and_notes():
    result = cycle_result(1)
    source, _ = source_for_cycle("c1")
    report = read_back(encode(write_cycle_sr(result, source, identity())))
    truth = {voi.name: {"mean_dose_gy": voi.mean_gy * 2} for voi in result.vois}
    manifest = SimpleNamespace(truth={"cycles": [{"number": 1, "vois": truth}]})
    lines = "\n".join(comparison_lines(manifest, {1: report}))
    for voi in result.vois:
        assert voi.name in lines
    assert "-50.0%" in lines
    excluded = [v for v in result.vois if v.excluded]
    assert excluded and f"excluded: {excluded[0].exclusion_reason}" in lines
    assert "partial volume" in lines


def test_doses_carry_the_reports_standard_uncertainty_when_it_has_a_budget():
    result = cycle_result(1, partial_volume="gtm")
    source, _ = source_for_cycle("c1")
    report = read_back(encode(write_cycle_sr(result, source, identity())))
    truth = {voi.name: {"mean_dose_gy": voi.mean_gy} for voi in result.vois}
    manifest = SimpleNamespace(truth={"cycles": [{"number": 1, "vois": truth}]})
    lines = comparison_lines(manifest, {1: report})
    voi = next(v for v in result.vois if v.uncertainty is not None)
    assert voi.uncertainty is not None
    row = next(line for line in lines if line.strip().startswith(voi.name))
    assert f"{plain_number(voi.mean_gy)} ± {plain_number(voi.uncertainty.standard_gy, 2)}" in row
