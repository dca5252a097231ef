"""Access: DICOM over TLS with client certificates, refusals, and a log without identities.

dcmtk ``storescu +tls`` with a certificate from the node's CA stores a whole
course; a client without a certificate, with one from another CA, or without
TLS at all is refused; AE-title and host checks still apply under TLS; and
the log of a full course ingest written by ``theranode serve`` itself at INFO
holds neither the patient's name nor the Patient ID.
(Plain-TCP AE-title/host refusals are in tests/service/test_scp.py.)
"""

from __future__ import annotations

import os
import ssl
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association

from tests.peers import require_tool
from tests.reliability.certificates import Pki, make_pki
from tests.reliability.processes import start_node, write_config
from tests.service import factory
from tests.service.nodes import make_settings, running_node
from tests.service.test_ingest_peers import course_files
from theranode.service.store import open_database
from theranode.service.store.index import IndexStore

INJECTION = datetime(2024, 5, 6, 9, 15)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    require_tool("openssl")
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_security(pki: Pki, **extra: object) -> dict[str, object]:
    return {"tls_cert": str(pki.server_cert), "tls_key": str(pki.server_key),
            "tls_ca": str(pki.ca_cert), **extra}


def client_context(pki: Pki, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca_cert))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def tls_associate(port: int, context: ssl.SSLContext | None,
                  ae_title: str = "TLSSCU") -> Association:
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(factory.CT, ExplicitVRLittleEndian)  # files are sent as they are
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 10
    tls_args = (context, "localhost") if context is not None else None
    return ae.associate("127.0.0.1", port, ae_title="THERANODE", tls_args=tls_args)


def storescu(
    port: int, options: list[str | Path], target: Path
) -> subprocess.CompletedProcess[str]:
    command = [require_tool("storescu"), "-aet", "MODALITY", "-aec", "THERANODE",
               *map(str, options), "127.0.0.1", str(port), str(target)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, TCP_NODELAY="1"))


def a_ct(tmp_path: Path) -> tuple[Path, str]:
    ds = factory.ct("TLS1", INJECTION + timedelta(hours=24), frame=factory.generate_uid())
    path = tmp_path / "ct.dcm"
    path.write_bytes(factory.encode(ds))
    return path, str(ds.SOPInstanceUID)


@pytest.mark.peer
@pytest.mark.slow
def test_storescu_over_tls_stores_a_course_and_the_log_names_no_patient(
        tmp_path: Path, pki: Pki, phantom_course):
    config = tmp_path / "node.toml"
    data_dir = tmp_path / "data"
    port = write_config(config, data_dir, security=tls_security(pki), logging={"level": "INFO"})
    node = start_node(config, port)
    try:
        done = storescu(port, ["+tls", pki.client_key, pki.client_cert, "+cf", pki.ca_cert,
                               "-pw", "+sd", "+r", "+sp", "*.dcm"], phantom_course.out_dir)
        assert done.returncode == 0, done.stderr + done.stdout
    finally:
        assert node.stop() == 0
    index = IndexStore(open_database(data_dir / "theranode.db"))
    assert index.counts()["instances"] == len(course_files(phantom_course))
    log = node.log.read_text(encoding="utf-8", errors="replace")
    assert "TLS on" in log and "Association accepted from MODALITY" in log
    assert "instance(s) stored" in log, "one line per series completed"
    identities = (phantom_course.spec.patient_name, phantom_course.patient_id,
                  *phantom_course.spec.patient_name.split("^"))
    for line in log.splitlines():
        for identity in identities:
            assert identity not in line, f"{identity!r} logged: {line}"


@pytest.mark.peer
def test_storescu_without_a_client_certificate_is_refused(tmp_path: Path, pki: Pki):
    one_file, _ = a_ct(tmp_path)
    with running_node(make_settings(tmp_path / "data", security=tls_security(pki))) as node:
        anonymous = storescu(node.port, ["+tla", "+cf", pki.ca_cert], one_file)
        rogue = storescu(node.port, ["+tls", pki.rogue_client_key, pki.rogue_client_cert,
                                     "+cf", pki.ca_cert, "-pw"], one_file)
        plain = storescu(node.port, [], one_file)
        assert anonymous.returncode != 0 and rogue.returncode != 0 and plain.returncode != 0
        assert node.index.counts()["instances"] == 0


def test_tls_client_certificate_is_required_and_checked(tmp_path: Path, pki: Pki):
    path, uid = a_ct(tmp_path)
    with running_node(make_settings(tmp_path / "data", security=tls_security(pki))) as node:
        for refused in (
            client_context(pki, None, None),  # no certificate
            client_context(pki, pki.rogue_client_cert, pki.rogue_client_key),  # another CA
            None,  # no TLS at all
        ):
            assoc = tls_associate(node.port, refused)
            assert not assoc.is_established
        assoc = tls_associate(node.port, client_context(pki, pki.client_cert, pki.client_key))
        assert assoc.is_established
        assert assoc.send_c_store(path).Status == 0x0000
        assoc.release()
        assert node.index.instance(uid) is not None
        assert node.index.counts()["instances"] == 1


def test_a_valid_certificate_does_not_bypass_ae_title_and_host_checks(tmp_path: Path, pki: Pki):
    good = client_context(pki, pki.client_cert, pki.client_key)
    security = tls_security(pki, allowed_calling_ae_titles=["TLSSCU"])
    with running_node(make_settings(tmp_path / "a", security=security)) as node:
        assert not tls_associate(node.port, good, ae_title="INTRUDER").is_established
        allowed = tls_associate(node.port, good, ae_title="TLSSCU")
        assert allowed.is_established
        allowed.release()
    security = tls_security(pki, allowed_hosts=["192.0.2.0/24"])
    with running_node(make_settings(tmp_path / "b", security=security)) as node:
        assert not tls_associate(node.port, good).is_established
    security = tls_security(pki, allowed_hosts=["127.0.0.0/8", "::1"])
    with running_node(make_settings(tmp_path / "c", security=security)) as node:
        accepted = tls_associate(node.port, good)
        assert accepted.is_established
        accepted.release()
