"""`theranode demo`'s receiver and output facing a hostile peer: file names only from valid
values, received strings shown escaped."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from tests.dicomio.result_records import cycle_result, identity, source_for_cycle
from tests.part10_bytes import read_back
from tests.peers import free_port
from theranode.dicomio.part10 import encode
from theranode.dicomio.pdf_report import ENCAPSULATED_PDF_STORAGE
from theranode.dicomio.sr import write_cycle_sr
from theranode.service.cli.demo import comparison_lines
from theranode.service.cli.demo_receiver import CANNOT_FILE, Receiver


def _document(modality: str, uid: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ENCAPSULATED_PDF_STORAGE
    ds.SOPInstanceUID = uid
    ds.Modality = modality
    return ds


def test_receiver_files_only_under_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "received"
    folder.mkdir()
    port = free_port()
    receiver = Receiver("THERANODE-DEMO", port, folder)
    try:
        ae = AE(ae_title="NODE")
        ae.add_requested_context(ENCAPSULATED_PDF_STORAGE, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", port, ae_title="THERANODE-DEMO")
        assert assoc.is_established
        good = generate_uid()
        statuses = [
            assoc.send_c_store(ds).Status
            for ds in (_document("../../escaped", generate_uid()),
                       _document("DOC", "../../escaped"), _document("DOC", good))
        ]
        assoc.release()
    finally:
        receiver.stop()
    assert statuses == [CANNOT_FILE, CANNOT_FILE, 0x0000]
    assert sorted(p.name for p in tmp_path.rglob("*.dcm")) == [f"DOC-{good}.dcm"]
    assert (folder / f"DOC-{good}.dcm").is_file()


def test_comparison_lines_show_the_series_description_escaped() -> None:
    result = cycle_result(1)
    source, _ = source_for_cycle("c1")
    report = read_back(encode(write_cycle_sr(result, source, identity())))
    report.SeriesDescription = "dose\x1b[2J\nFAKE cycle 1 v1"
    truth = {voi.name: {"mean_dose_gy": voi.mean_gy} for voi in result.vois}
    manifest = SimpleNamespace(truth={"cycles": [{"number": 1, "vois": truth}]})
    lines = comparison_lines(manifest, {1: report})  # type: ignore[arg-type]
    assert "\nCycle 1 (dose\\x1b[2J\\nFAKE cycle 1 v1)" in lines
    assert not any("\x1b" in line for line in lines)
