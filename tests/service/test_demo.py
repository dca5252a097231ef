"""`theranode demo`: VOI doses beside the truth with what explains the gap, the temporary
node's configuration, which node the command line names, how results are grouped."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from tests.dicomio.result_records import (
    course_result,
    cycle_result,
    identity,
    source_for_cycle,
)
from tests.part10_bytes import read_back
from theranode.config.schema import load_settings, settings_from_dict
from theranode.config.writing import settings_toml
from theranode.dicomio.part10 import encode
from theranode.dicomio.pdf_report import plain_number
from theranode.dicomio.sr import write_course_sr, write_cycle_sr
from theranode.dicomio.uids import ResultKind
from theranode.service.cli.demo import comparison_lines, running_node_address
from theranode.service.cli.demo_node import (
    DEMO_CONFIG_COMMENT,
    DEMO_QUIET_PERIOD_S,
    demo_node_settings,
)
from theranode.service.cli.demo_receiver import (
    CourseCoverage,
    ReceivedFile,
    ResultFiles,
    result_files,
    results_complete,
    wanted_results,
)
from theranode.service.cli.main import build_parser
from theranode.service.deliver.sender import (
    COMPREHENSIVE_3D_SR_STORAGE,
    ENCAPSULATED_PDF_STORAGE,
    RT_DOSE_STORAGE,
)


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


# -- the temporary node's configuration and the command line ------------------------
def test_the_temporary_nodes_configuration_reads_back_to_the_same_settings(tmp_path: Path):
    base = settings_from_dict({
        "security": {"allowed_calling_ae_titles": ["MODALITY"], "allowed_hosts": ["10.0.0.0/8"]},
        "calibration": {"cameras": [{"manufacturer": "Siemens \"Intevo\"", "cps_per_mbq": 9.5}]},
        "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "10.1.1.1", "port": 104}],
    })
    settings = demo_node_settings(base, tmp_path / "data", 40001, 40002, "THERANODE-DEMO")
    path = tmp_path / "theranode.toml"
    path.write_text(settings_toml(settings, DEMO_CONFIG_COMMENT), encoding="utf-8")
    read = load_settings(path)
    assert dataclasses.replace(read, source=settings.source) == settings
    assert read.calibration.cameras[0].manufacturer == 'Siemens "Intevo"'
    defaults = load_settings()
    path.write_text(settings_toml(defaults, DEMO_CONFIG_COMMENT), encoding="utf-8")
    assert dataclasses.replace(load_settings(path), source=defaults.source) == defaults


def test_the_temporary_node_sends_only_to_the_demo_and_lets_it_call():
    base = settings_from_dict({
        "security": {"allowed_calling_ae_titles": ["MODALITY"], "tls_cert": "node.pem",
                     "tls_key": "node.key"},
        "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "10.1.1.1", "port": 104}],
    })
    settings = demo_node_settings(base, Path("/tmp/d"), 40001, 40002, "THERANODE-DEMO")
    assert (settings.node.bind, settings.node.port, settings.node.data_dir) == (
        "127.0.0.1", 40001, "/tmp/d")
    assert [(d.ae_title, d.host, d.port) for d in settings.destinations] == [
        ("THERANODE-DEMO", "127.0.0.1", 40002)]
    assert settings.security.allowed_calling_ae_titles == ["MODALITY", "THERANODE-DEMO"]
    assert settings.security.tls_cert == settings.security.tls_key == ""
    assert settings.protocol.quiet_period_s == DEMO_QUIET_PERIOD_S
    assert settings.dosimetry == base.dosimetry and settings.limits == base.limits


@pytest.mark.parametrize(("argv", "address"), [
    ([], None),
    (["--node", "pacs.example:4242"], ("pacs.example", 4242)),
    (["--node", "[::1]:11112"], ("::1", 11112)),
    (["--port", "11112"], ("127.0.0.1", 11112)),
    (["--host", "10.0.0.5"], ("10.0.0.5", 11112)),  # port from the configuration
])
def test_a_running_node_is_used_only_when_named(argv: list[str], address: object):
    args = build_parser().parse_args(["demo", *argv])
    assert running_node_address(args, load_settings()) == address


def test_a_malformed_node_address_is_refused(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--node", "localhost"])
    assert "expected HOST:PORT" in capsys.readouterr().err


def test_received_results_are_grouped_by_cycle_course_and_version():
    def received(kind: str, description: str) -> ReceivedFile:
        return ReceivedFile(Path(f"/r/{kind}-{description[-10:]}.dcm"), kind, "1.2",
                            f"theranode Lu-177 {description}")

    files = [received(RT_DOSE_STORAGE, "AD cycle 2 v1"),
             received(COMPREHENSIVE_3D_SR_STORAGE, "AD report cycle 2 v1"),
             received(ENCAPSULATED_PDF_STORAGE, "AD report PDF cycle 2 v1"),
             received(COMPREHENSIVE_3D_SR_STORAGE, "cumulative AD report course v3"),
             received(COMPREHENSIVE_3D_SR_STORAGE, "AD report cycle 2 v2"),
             ReceivedFile(Path("/r/x.dcm"), COMPREHENSIVE_3D_SR_STORAGE, "1.3", "other SR")]
    results = result_files(files)
    assert set(results) == {("cycle 2", 1), ("course", 3), ("cycle 2", 2)}
    assert set(results["cycle 2", 1].paths) == {"RT Dose", "SR", "PDF"}
    assert results["cycle 2", 1].has_report and not results["cycle 2", 2].has_report
    assert not results["course", 3].has_report


def test_the_course_is_complete_only_when_its_report_sums_every_cycle_sent(tmp_path: Path):
    source, _ = source_for_cycle()
    sr_path, pdf_path = tmp_path / "course-sr.dcm", tmp_path / "course-pdf.dcm"
    sr_path.write_bytes(encode(write_course_sr(course_result(), source,
                                               identity(ResultKind.COURSE))))
    pdf_path.write_bytes(b"not read")
    cycle_1_sr = tmp_path / "cycle-1-sr.dcm"
    cycle_1_sr.write_bytes(encode(write_cycle_sr(cycle_result(1), source, identity())))
    not_tid_1500 = tmp_path / "other.dcm"
    other = Dataset()
    other.file_meta = FileMetaDataset()
    other.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    other.SOPClassUID, other.SOPInstanceUID = COMPREHENSIVE_3D_SR_STORAGE, "1.2.3"
    other.Modality = "SR"
    other.save_as(not_tid_1500, enforce_file_format=True)
    cycle_files = {"SR": tmp_path / "c.dcm", "PDF": tmp_path / "p.dcm"}
    course = ResultFiles("course", 2, {"SR": sr_path, "PDF": pdf_path})
    chosen = [ResultFiles("cycle 1", 1, cycle_files), ResultFiles("cycle 2", 1, cycle_files),
              course]
    coverage = CourseCoverage()
    assert coverage.cycles(sr_path) == {1, 2}  # the two-cycle course of the records
    assert results_complete(chosen, {1, 2}, coverage)
    assert not results_complete(chosen[1:], {1, 2}, coverage)  # cycle 1's own report missing
    assert not results_complete(chosen, {1, 2, 3}, coverage)  # cycle 3 sent, not summed yet
    assert coverage.cycles(cycle_1_sr) == {1}
    assert coverage.cycles(not_tid_1500) == frozenset()  # unreadable: sums nothing
    older = ResultFiles("course", 1, {"SR": cycle_1_sr, "PDF": pdf_path})  # cycle 1 only
    results = {("cycle 1", 1): chosen[0], ("cycle 2", 1): chosen[1], ("course", 2): course,
               ("course", 1): older}
    assert wanted_results(results, {1, 2}, coverage)[-1] is course
