"""The settings schema: every setting theranode reads, with default and help.

Settings are declared as data, one frozen dataclass per TOML section, each
field carrying its default and its help text in ``metadata`` (like
datasette's ``Setting``). :func:`load_settings` reads a TOML file, rejects
unknown keys and bad values with one message each, and returns a
:class:`Settings`. The shipped ``config/theranode.toml`` documents the same
settings; a test keeps the two in step.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import socket
import tomllib
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_PATH = Path(__file__).with_name("theranode.toml")
#: File name of the node's SQLite database in its data folder.
DATABASE_NAME = "theranode.db"

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE VR: no backslash


class ConfigError(Exception):
    """The configuration file is unreadable or holds unknown keys or bad values."""

    def __init__(self, problems: list[str], source: str = "configuration") -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source} has {len(problems)} problem(s):\n{lines}")


Check = Callable[[Any], str | None]


def setting(
    default: Any,
    help: str,
    check: Check | None = None,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """Declare one setting: its default, help text and optional value check.

    Mutable defaults (lists) are given as ``factory``, called per instance.
    """
    metadata = {"help": help, "check": check}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


# -- value checks --------------------------------------------------------
def port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else f"must be a TCP port 1–65535, got {value}"


def positive(value: float) -> str | None:
    return None if value > 0 else f"must be greater than 0, got {value}"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else f"must be 0 or more, got {value}"


def ae_title(value: str) -> str | None:
    if _AE_TITLE.match(value) and value.strip():
        return None
    return f"must be a DICOM AE title (1–16 printable characters, no backslash), got {value!r}"


def ae_titles(values: list[str]) -> str | None:
    for value in values:
        problem = ae_title(value)
        if problem:
            return problem
    return None


def hosts(values: list[str]) -> str | None:
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            return f"must list IP addresses or networks (e.g. 10.0.0.0/24), got {value!r}"
    return None


def one_of(*choices: str) -> Check:
    def check(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}; got {value!r}"

    return check


def cron(value: str) -> str | None:
    if value == "" or len(value.split()) == 5:
        return None
    return (
        "must be a 5-field cron expression such as '0 3 * * *' (or empty to disable), "
        f"got {value!r}"
    )


def positive_numbers(values: list[float]) -> str | None:
    for value in values:
        if not value > 0:
            return f"must list numbers greater than 0, got {value}"
    return None


def cycle_numbers(values: list[int]) -> str | None:
    for value in values:
        if value < 1:
            return f"must list cycle numbers 1, 2, …; got {value}"
    return None


def database_url(value: str) -> str | None:
    if value == "" or re.match(r"^(sqlite:///.+|postgres(ql)?://.+)$", value):
        return None
    return ("must be empty (SQLite in the data folder), sqlite:///path/to/file.db or "
            f"postgresql://user:password@host:5432/name; got {value!r}")


def fraction(value: float) -> str | None:
    return None if 0 < value <= 1 else f"must be in (0, 1], got {value}"


# -- sections ------------------------------------------------------------
@dataclass(frozen=True)
class NodeSettings:
    ae_title: str = setting("THERANODE", "The node's own AE title (called AE title).", ae_title)
    bind: str = setting("0.0.0.0", "Address the DICOM listener binds to.")
    port: int = setting(11112, "TCP port of the DICOM listener.", port)
    data_dir: str = setting(
        "theranode-data",
        "Folder for the archive, the database, quarantine and reports "
        "(relative paths are relative to the working directory).",
    )
    name: str = setting(
        "",
        "Name of this node among several sharing one PostgreSQL database and archive folder "
        "(logs, job records, its own incoming/<name> folder); empty: <host name>-<port>.",
    )
    listener_processes: int = setting(
        1,
        "Processes that accept DICOM associations on the port (SO_REUSEPORT, Linux); more "
        "than 1 lets parallel associations use several cores. max_associations and "
        "max_connections apply to each process; quarantine_quota_mb is shared out.",
        positive,
    )


@dataclass(frozen=True)
class SecuritySettings:
    allowed_calling_ae_titles: list[str] = setting(
        [], "Calling AE titles allowed to associate; empty = any.", ae_titles
    )
    allowed_hosts: list[str] = setting(
        [], "Peer IP addresses or networks allowed to associate; empty = any.", hosts
    )
    tls_cert: str = setting("", "PEM certificate of the node; with tls_key enables TLS.")
    tls_key: str = setting("", "PEM private key of the node.")
    tls_ca: str = setting(
        "",
        "PEM CA bundle; when set, peers must present a certificate signed by it (needs "
        "tls_cert and tls_key: a CA alone is refused, not served in plaintext).",
    )
    max_associations: int = setting(8, "Concurrent associations; more are rejected.", positive)
    max_connections: int = setting(
        32,
        "Open TCP connections, associated or not (each holds threads); more are closed at "
        "once. Keep it above max_associations.",
        positive,
    )
    handshake_timeout_s: float = setting(
        10.0, "Seconds a peer has to complete the TLS handshake; then it is closed.", positive
    )
    acse_timeout_s: float = setting(
        30.0,
        "Seconds a peer has to send its whole A-ASSOCIATE-RQ once connected (and past TLS); "
        "then it is closed.",
        positive,
    )
    max_association_request_kb: int = setting(
        128,
        "Largest A-ASSOCIATE-RQ PDU accepted (KiB); a larger one is refused from its header, "
        "unread.",
        positive,
    )
    reclaim_idle_after_s: float = setting(
        60.0,
        "When all max_associations are in use, a new association takes the slot of the one "
        "that has stored nothing for longest, if that is at least this long (C-ECHO does not "
        "count as storing).",
        positive,
    )
    max_instance_mb: int = setting(
        2048,
        "Largest data set one C-STORE may carry (MB); a larger one is answered 0xA700 and "
        "not kept.",
        positive,
    )
    quarantine_quota_mb: int = setting(
        10240,
        "Most disk space the quarantine may use (MB); an object refused beyond it is "
        "answered 0xA700 and not kept.",
        positive,
    )
    min_free_disk_mb: int = setting(
        1024,
        "Refuse storage (status 0xA700) when the archive's disk has less free space.",
        non_negative,
    )
    max_inflated_mb: int = setting(
        256,
        "Largest data set a Deflated Explicit VR Little Endian object may inflate to (MB); "
        "inflation stops there and the object is refused (0xC102) and quarantined.",
        positive,
    )
    max_elements: int = setting(
        500_000,
        "Most data elements one object may hold, nested ones included; more: refused "
        "(0xC102) and quarantined, counted before parsing.",
        positive,
    )
    max_sequence_items: int = setting(
        50_000,
        "Most sequence items one object may hold, all sequences and levels summed; more: "
        "refused (0xC102) and quarantined, counted before parsing.",
        positive,
    )
    max_contour_points: int = setting(
        1_000_000,
        "Most contour points (x, y, z triplets of Contour Data) one RT Structure Set may hold, "
        "every ROI summed; more: refused (0xC102) and quarantined, counted before parsing.",
        positive,
    )
    max_contours_per_roi: int = setting(
        10_000,
        "Most contours one ROI of an RT Structure Set may hold (each lies on one plane); more: "
        "refused (0xC102) and quarantined, counted before parsing.",
        positive,
    )


@dataclass(frozen=True)
class LoggingSettings:
    level: str = setting(
        "INFO", "Log level.", one_of("DEBUG", "INFO", "WARNING", "ERROR")
    )
    file: str = setting("", "Log file (rotated daily); empty = standard error only.")


@dataclass(frozen=True)
class TimePointWindow:
    nominal_h: float = setting(24.0, "Nominal time after injection (h).", positive)
    min_h: float = setting(12.0, "Earliest acquisition counted for it (h).", non_negative)
    max_h: float = setting(48.0, "Acquisitions before this belong to it (h).", positive)


DEFAULT_WINDOWS = [
    {"nominal_h": 4.0, "min_h": 0.0, "max_h": 12.0},
    {"nominal_h": 24.0, "min_h": 12.0, "max_h": 48.0},
    {"nominal_h": 72.0, "min_h": 48.0, "max_h": 120.0},
    {"nominal_h": 192.0, "min_h": 120.0, "max_h": 336.0},
]


@dataclass(frozen=True)
class GroupingSettings:
    same_injection_tolerance_min: float = setting(
        30.0,
        "Injection date-times closer than this are the same administration (cycle).",
        positive,
    )
    new_course_after_days: float = setting(
        180.0,
        "A gap between administrations longer than this starts a new treatment course.",
        positive,
    )
    time_points: list[TimePointWindow] = setting(
        None,
        "Time-point windows: acquisitions are binned by hours after injection.",
        factory=lambda: [TimePointWindow(**w) for w in DEFAULT_WINDOWS],
    )


@dataclass(frozen=True)
class CohortSettings:
    schedule: str = setting(
        "0 3 * * *", "Cron schedule of the cohort statistics job; empty = on demand only.", cron
    )


@dataclass(frozen=True)
class ProtocolSettings:
    multi_time_point_cycles: list[int] = setting(
        [1, 2],
        "Cycle numbers (within a course) imaged at several time points; the other cycles "
        "are single-time-point cycles.",
        cycle_numbers,
    )
    multi_time_points_h: list[float] = setting(
        [4.0, 24.0, 72.0, 192.0],
        "Nominal time points (h) a multi-time-point cycle expects (each must be the "
        "nominal_h of a grouping time-point window).",
        positive_numbers,
    )
    single_time_point_h: float = setting(
        24.0, "Nominal time point (h) of a single-time-point cycle's scan.", positive
    )
    min_time_points: int = setting(
        3,
        "At the forced timeout a multi-time-point cycle runs with what it has if it has at "
        "least this many time points; otherwise it is marked incomplete.",
        positive,
    )
    quiet_period_s: float = setting(
        30.0, "A cycle is computed only this long after the last instance of its series.",
        non_negative,
    )
    forced_timeout_h: float = setting(
        144.0,
        "Hours after the last instance of a cycle after which it runs with what it has "
        "(or is marked incomplete) even though expected time points are missing.",
        positive,
    )
    single_time_point_fallback: str = setting(
        "hanscheid",
        "Single-time-point method when the course has no multi-time-point cycle to scale "
        "from: hanscheid (Hänscheid 2018) or madsen (Madsen 2018, population half-lives).",
        one_of("hanscheid", "madsen"),
    )
    population_half_life_organ_h: float = setting(
        60.0, "Madsen: population effective half-life of organs (h).", positive
    )
    population_half_life_marrow_h: float = setting(
        40.0, "Madsen: population effective half-life of bone marrow (h).", positive
    )
    population_half_life_lesion_h: float = setting(
        90.0, "Madsen: population effective half-life of lesions (h).", positive
    )
    planned_cycles: int = setting(
        4, "Cycles planned per course (projection of total absorbed dose).", positive
    )


SCHNEIDER_HU = [-1000.0, -98.0, 14.0, 100.0, 1600.0]
SCHNEIDER_G_PER_ML = [0.0012, 0.93, 1.03, 1.12, 1.96]


@dataclass(frozen=True)
class DosimetrySettings:
    kinetic_model: str = setting(
        "monoexponential",
        "Model of the VOI time-dose-rate curves.",
        one_of("monoexponential", "biexponential-uptake", "trapezoid+physical-tail"),
    )
    select_model_by_aicc: bool = setting(
        False, "Choose between mono- and bi-exponential by AICc (needs ≥ 5 time points)."
    )
    min_lesion_volume_ml: float = setting(
        2.0, "Lesions smaller than this (mL) are flagged and excluded from indices.", positive
    )
    apply_recovery_to_marrow: bool = setting(
        False, "Also divide the bone-marrow dose by RC(volume)."
    )
    recovery_plateau: float = setting(
        1.0, "Recovery curve RC(V) = a / (1 + (b/V)^c): plateau a.", fraction
    )
    recovery_half_volume_ml: float = setting(
        2.0, "Recovery curve: volume b (mL) where RC = a/2.", positive
    )
    recovery_slope: float = setting(1.0, "Recovery curve: slope c.", positive)
    partial_volume: str = setting(
        "paper",
        "Partial-volume correction: 'paper' (RC(volume) for lesions, Hebert 2024), "
        "'paper-contrast' (RC with the lesion's local background) or 'gtm' (geometric "
        "transfer matrix for every VOI, RBV dose map); the last two need the camera's FWHM.",
        one_of("paper", "paper-contrast", "gtm"),
    )
    gas_policy: str = setting(
        "zero-dose",
        "LED in gas voxels (density below gas_threshold_g_per_ml).",
        one_of("zero-dose", "water-density", "clip-density", "keep"),
    )
    gas_threshold_g_per_ml: float = setting(
        0.1, "Voxels below this density (g/mL) count as gas.", non_negative
    )
    density_points_hu: list[float] = setting(
        SCHNEIDER_HU, "HU of the HU → density calibration points (strictly increasing)."
    )
    density_points_g_per_ml: list[float] = setting(
        SCHNEIDER_G_PER_ML, "Densities (g/mL) at those points.", positive_numbers
    )
    voxelwise_map: bool = setting(
        True, "Compute the voxel-wise dose map (needed for RT Dose)."
    )
    max_organ_gy_per_gbq: float = setting(
        5.0,
        "Hold (do not send) a cycle whose organ or marrow mean dose per administered "
        "activity exceeds this (Gy/GBq; published organ values stay below about 1.5).",
        positive,
    )
    max_lesion_gy_per_gbq: float = setting(
        100.0,
        "Hold (do not send) a cycle whose lesion mean dose per administered activity "
        "exceeds this (Gy/GBq; published lesion values reach tens).",
        positive,
    )


def percent(value: float) -> str | None:
    return None if 0 <= value < 100 else f"must be a percentage in [0, 100), got {value}"


def millimetres(value: float) -> str | None:
    return None if 0 <= value <= 50 else f"must be in [0, 50] mm, got {value}"


@dataclass(frozen=True)
class UncertaintySettings:
    calibration_percent: float = setting(
        5.0, "Standard uncertainty of the SPECT calibration factor (%).", percent
    )
    psf_fwhm_sd_mm: float = setting(
        1.0, "Standard uncertainty of the configured SPECT resolution (FWHM, mm).", millimetres
    )
    recovery_curve_percent: float = setting(
        5.0, "Standard uncertainty of the recovery curve RC(V) itself (%).", percent
    )
    organ_volume_percent: float = setting(
        5.0, "Standard uncertainty of an organ's or the marrow's delineated volume (%).", percent
    )
    lesion_volume_percent: float = setting(
        15.0, "Standard uncertainty of a lesion's delineated volume (%).", percent
    )
    registration_sd_mm: float = setting(
        2.0, "Residual error of the CT-to-CT registration, per axis (mm).", millimetres
    )
    scaled_method_percent: float = setting(
        5.0, "Spread of the paper's single-time-point scaling from a reference cycle (%).", percent
    )
    hanscheid_percent: float = setting(
        30.0, "Spread of Hänscheid's single-time-point method at ~24 h (%).", percent
    )
    madsen_percent: float = setting(
        30.0, "Spread of Madsen's single-time-point method with a population half-life (%).",
        percent,
    )


@dataclass(frozen=True)
class CameraCalibration:
    manufacturer: str = setting("", "Manufacturer (0008,0070) to match; empty = any.")
    model_name: str = setting("", "Manufacturer's Model Name (0008,1090); empty = any.")
    station_name: str = setting("", "Station Name (0008,1010); empty = any.")
    cps_per_mbq: float = setting(10.0, "Sensitivity of that camera (cps/MBq).", positive)
    spect_fwhm_mm: float = setting(
        0.0,
        "Resolution of that camera's reconstructed SPECT: FWHM (mm) of a Gaussian point "
        "spread function (partial-volume correction); 0 = default_spect_fwhm_mm.",
        non_negative,
    )


@dataclass(frozen=True)
class CalibrationSettings:
    default_cps_per_mbq: float = setting(
        0.0,
        "Sensitivity (cps/MBq) for SPECT in counts from a camera no [[calibration.cameras]] "
        "entry matches; 0 = refuse such SPECT.",
        non_negative,
    )
    correct_decay_during_acquisition: bool = setting(
        True, "Refer counts to the acquisition start (λT / (1 − e^(−λT)))."
    )
    default_spect_fwhm_mm: float = setting(
        0.0,
        "Resolution (FWHM, mm, Gaussian point spread function) of reconstructed SPECT from a "
        "camera whose [[calibration.cameras]] entry states none, or that no entry matches; "
        "0 = unknown (the partial-volume methods 'paper-contrast' and 'gtm' then refuse it).",
        non_negative,
    )
    cameras: list[CameraCalibration] = setting(
        [], "Per-camera sensitivities, matched on manufacturer, model and station name."
    )


@dataclass(frozen=True)
class JobSettings:
    workers: int = setting(
        1, "Dosimetry jobs run at the same time (each in its own worker process).", positive
    )
    poll_interval_s: float = setting(
        5.0, "How often cycles are re-examined for completion (s).", positive
    )
    max_attempts: int = setting(
        3, "Runs of a job whose worker process dies from outside (killed by a signal or the "
        "out-of-memory killer) before the job is failed; a job that ends with an error is not "
        "retried, and a run interrupted by a shutdown or crash of the node is not counted.",
        positive,
    )
    stalled_after_s: float = setting(
        30.0, "With a shared PostgreSQL database: a worker silent this long (no heartbeat) is "
        "taken for dead, and its job runs again elsewhere (counted as a lost run).",
        positive,
    )
    max_job_minutes: float = setting(
        30.0, "Longest a job may compute (minutes); then its worker process is killed and the "
        "job failed, not retried (it would run as long again). A clinical-size cycle takes "
        "well under a minute.",
        positive,
    )


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = setting(
        "", "Database URL: empty for SQLite in the data folder (one node), or "
        "postgresql://user:password@host:5432/name shared by several nodes and workers.",
        database_url,
    )


@dataclass(frozen=True)
class OutboxSettings:
    retry_base_s: float = setting(
        10.0, "First retry delay after a failed delivery (s); doubles per attempt.", positive
    )
    retry_max_s: float = setting(3600.0, "Longest delay between delivery attempts (s).", positive)


@dataclass(frozen=True)
class LimitSettings:
    kidney_gy: float = setting(
        23.0, "Course limit of the kidneys' mean absorbed dose (Gy).", positive
    )
    marrow_gy: float = setting(
        2.0, "Course limit of the bone marrow's (L2-L4) mean absorbed dose (Gy).", positive
    )
    warning_fraction: float = setting(
        0.8, "A course total from this fraction of a limit is flagged as approaching it.", fraction
    )
    lesion_mean_cut_gy: float = setting(
        91.36, "Cut-point of the mean total lesion absorbed dose (Gy).", positive
    )
    lesion_min_cut_gy: float = setting(
        52.52, "Cut-point of the minimum total lesion absorbed dose (Gy).", positive
    )
    kidney_alpha_beta_gy: float = setting(
        2.6, "Kidney alpha/beta ratio of the linear-quadratic model (Gy), for the BED.", positive
    )
    kidney_repair_half_time_h: float = setting(
        2.8, "Kidney sublethal-damage repair half-time (h), for the BED.", positive
    )
    kidney_bed_gy: float = setting(
        40.0, "Course limit of the kidneys' biologically effective dose (Gy).", positive
    )


@dataclass(frozen=True)
class ReportSettings:
    paper_size: str = setting("A4", "Page size of the PDF reports.", one_of("A4", "Letter"))
    radiopharmaceutical_dose_sr: bool = setting(
        False,
        "Also send a Radiopharmaceutical Radiation Dose SR per cycle (organ doses for "
        "IHE REM-NM dose registries).",
    )


@dataclass(frozen=True)
class Destination:
    name: str = setting("pacs", "Symbolic name of the destination.")
    ae_title: str = setting("PACS", "AE title of the destination.", ae_title)
    host: str = setting("127.0.0.1", "Host name or address.")
    port: int = setting(104, "TCP port.", port)
    folder: str = setting(
        "", "Write results as files into this folder instead of sending them (DICOM if empty)."
    )
    tls_ca: str = setting(
        "",
        "PEM CA bundle that signed the destination's certificate; when set, results go over "
        "TLS, and the destination must present a certificate signed by it for host.",
    )
    tls_cert: str = setting(
        "", "PEM client certificate the node presents to this destination (with tls_key and "
        "tls_ca), for a destination that requires one."
    )
    tls_key: str = setting("", "PEM private key (unencrypted) of tls_cert.")


@dataclass(frozen=True)
class Settings:
    """All settings in effect, one attribute per TOML section."""

    node: NodeSettings = field(default_factory=NodeSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    grouping: GroupingSettings = field(default_factory=GroupingSettings)
    cohort: CohortSettings = field(default_factory=CohortSettings)
    protocol: ProtocolSettings = field(default_factory=ProtocolSettings)
    dosimetry: DosimetrySettings = field(default_factory=DosimetrySettings)
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)
    uncertainty: UncertaintySettings = field(default_factory=UncertaintySettings)
    jobs: JobSettings = field(default_factory=JobSettings)
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    reports: ReportSettings = field(default_factory=ReportSettings)
    destinations: list[Destination] = field(default_factory=list)
    source: str = "built-in defaults"

    @property
    def data_dir(self) -> Path:
        return Path(self.node.data_dir)

    @property
    def database_path(self) -> Path:
        """The node's embedded SQLite database (index, jobs, outbox, outcomes), in the data
        folder; used unless ``[database] url`` names another."""
        return self.data_dir / DATABASE_NAME

    @property
    def database_url(self) -> str:
        """``[database] url``, or the URL of :attr:`database_path`."""
        return self.database.url or f"sqlite:///{self.database_path}"

    @property
    def node_name(self) -> str:
        """``[node] name``, or ``<host name>-<port>``: unique among nodes sharing a database."""
        return self.node.name or f"{socket.gethostname()}-{self.node.port}"

    @property
    def incoming_name(self) -> str | None:
        """This node's folder in ``incoming/`` when the archive may be shared, else None."""
        return self.node_name if self.shared_database else None

    @property
    def shared_database(self) -> bool:
        """True when the database is a server (PostgreSQL) that other nodes may share."""
        return self.database_url.startswith("postgres")


SECTIONS: dict[str, type] = {
    "node": NodeSettings,
    "security": SecuritySettings,
    "logging": LoggingSettings,
    "grouping": GroupingSettings,
    "cohort": CohortSettings,
    "protocol": ProtocolSettings,
    "dosimetry": DosimetrySettings,
    "calibration": CalibrationSettings,
    "uncertainty": UncertaintySettings,
    "jobs": JobSettings,
    "outbox": OutboxSettings,
    "limits": LimitSettings,
    "reports": ReportSettings,
    "database": DatabaseSettings,
}
LIST_SECTIONS: dict[str, type] = {"destinations": Destination}
NESTED_TABLES: dict[tuple[type, str], type] = {
    (GroupingSettings, "time_points"): TimePointWindow,
    (CalibrationSettings, "cameras"): CameraCalibration,
}


# -- loading -------------------------------------------------------------
def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in (str, bool):
        return isinstance(value, annotation)
    if origin is list:
        (item,) = typing.get_args(annotation)
        return isinstance(value, list) and (
            dataclasses.is_dataclass(item) or all(_type_ok(v, item) for v in value)
        )
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    return True


def _type_name(annotation: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if annotation in names:
        return names[annotation]
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        if dataclasses.is_dataclass(item):
            return "a list of tables"
        return f"a list of {_type_name(item).removeprefix('a ').removeprefix('an ')}s"
    return str(annotation)


def _build(cls: type, table: Any, where: str, problems: list[str]) -> Any:
    if not isinstance(table, dict):
        problems.append(f"[{where}] must be a table, got {type(table).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in table:
        if key not in fields:
            known = ", ".join(sorted(fields))
            problems.append(f"{where}.{key}: unknown setting (known: {known})")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in table:
            continue
        value = table[name]
        annotation = hints[name]
        nested = NESTED_TABLES.get((cls, name))
        if not _type_ok(value, annotation):
            problems.append(f"{where}.{name}: must be {_type_name(annotation)}, got {value!r}")
            continue
        if nested is not None:
            value = [_build(nested, item, f"{where}.{name}[{i}]", problems)
                     for i, item in enumerate(value)]
        if isinstance(value, int) and annotation is float:
            value = float(value)
        if annotation == list[float]:
            value = [float(v) for v in value]
        check = f.metadata.get("check")
        problem = check(value) if check else None
        if problem:
            problems.append(f"{where}.{name}: {problem}")
            continue
        values[name] = value
    return cls(**values)


def _cross_checks(settings: Settings, problems: list[str]) -> None:
    for i, w in enumerate(settings.grouping.time_points):
        if not w.min_h <= w.nominal_h < w.max_h:
            problems.append(
                f"grouping.time_points[{i}]: needs min_h ≤ nominal_h < max_h, got "
                f"{w.min_h} / {w.nominal_h} / {w.max_h}"
            )
    windows = sorted(settings.grouping.time_points, key=lambda w: w.min_h)
    for a, b in zip(windows, windows[1:]):
        if b.min_h < a.max_h:
            problems.append(
                f"grouping.time_points: windows around {a.nominal_h} h and {b.nominal_h} h overlap"
            )
    if bool(settings.security.tls_cert) != bool(settings.security.tls_key):
        problems.append("security: tls_cert and tls_key must be given together")
    if settings.security.max_connections < settings.security.max_associations:
        problems.append(
            f"security: max_connections ({settings.security.max_connections}) is below "
            f"max_associations ({settings.security.max_associations}); associations would be "
            "refused before the association limit is reached"
        )
    _tls_checks(settings, problems)
    _protocol_checks(settings, problems)
    names = [d.name for d in settings.destinations]
    for name in {n for n in names if names.count(n) > 1}:
        problems.append(f"destinations: the name {name!r} is used more than once")


def _tls_checks(settings: Settings, problems: list[str]) -> None:
    """TLS settings that would do something else than they say (files: theranode.service.tls)."""
    if settings.security.tls_ca and not settings.security.tls_cert:
        problems.append(
            "security.tls_ca: needs tls_cert and tls_key; without them the listener would "
            "serve plaintext. Give the node's certificate and key, or remove tls_ca")
    for i, d in enumerate(settings.destinations):
        where = f"destinations[{i}]"
        if bool(d.tls_cert) != bool(d.tls_key):
            problems.append(f"{where}: tls_cert and tls_key must be given together")
        if d.tls_cert and not d.tls_ca:
            problems.append(
                f"{where}: tls_cert and tls_key need tls_ca, the CA that signed the "
                "destination's certificate (TLS to a destination is on only with tls_ca)")
        if d.folder and (d.tls_ca or d.tls_cert or d.tls_key):
            problems.append(f"{where}: tls_ca, tls_cert and tls_key do not apply to a folder "
                            "destination; remove them or the folder")


def _protocol_checks(settings: Settings, problems: list[str]) -> None:
    nominal = {w.nominal_h for w in settings.grouping.time_points}
    protocol = settings.protocol
    for hours in [*protocol.multi_time_points_h, protocol.single_time_point_h]:
        if hours not in nominal:
            problems.append(
                f"protocol: time point {hours:g} h is not the nominal_h of any "
                f"[[grouping.time_points]] window ({', '.join(f'{n:g}' for n in sorted(nominal))})"
            )
    if protocol.min_time_points > len(protocol.multi_time_points_h):
        problems.append(
            f"protocol.min_time_points ({protocol.min_time_points}) exceeds the "
            f"{len(protocol.multi_time_points_h)} time points of multi_time_points_h"
        )
    if protocol.min_time_points < 2:
        problems.append("protocol.min_time_points: a kinetic fit needs at least 2 time points")
    dosimetry = settings.dosimetry
    hu, rho = dosimetry.density_points_hu, dosimetry.density_points_g_per_ml
    if len(hu) != len(rho) or len(hu) < 2:
        problems.append(
            "dosimetry: density_points_hu and density_points_g_per_ml need the same number "
            f"(≥ 2) of points, got {len(hu)} and {len(rho)}"
        )
    elif any(b <= a for a, b in zip(hu, hu[1:])):
        problems.append("dosimetry.density_points_hu: must be strictly increasing")


def settings_from_dict(data: dict[str, Any], source: str = "configuration") -> Settings:
    """Validate a parsed TOML document and build :class:`Settings`."""
    problems: list[str] = []
    sections: dict[str, Any] = {}
    for key, table in data.items():
        if key in SECTIONS:
            sections[key] = _build(SECTIONS[key], table, key, problems)
        elif key in LIST_SECTIONS:
            if not isinstance(table, list):
                problems.append(f"[[{key}]] must be an array of tables")
                continue
            sections[key] = [
                _build(LIST_SECTIONS[key], item, f"{key}[{i}]", problems)
                for i, item in enumerate(table)
            ]
        else:
            known = ", ".join(sorted([*SECTIONS, *LIST_SECTIONS]))
            problems.append(f"[{key}]: unknown section (known: {known})")
    settings = Settings(**sections, source=source)
    _cross_checks(settings, problems)
    if problems:
        raise ConfigError(problems, source)
    return settings


def load_settings(path: Path | str | None = None) -> Settings:
    """Read and validate a TOML configuration file (``None`` = shipped defaults)."""
    config_path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    try:
        data = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"file not found: {config_path}"], str(config_path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"], str(config_path)) from None
    return settings_from_dict(data, source=str(config_path))


def iter_settings(settings: Settings) -> Iterator[tuple[str, Any, str]]:
    """``(dotted name, value, help)`` of every setting in effect."""
    for section, cls in SECTIONS.items():
        obj = getattr(settings, section)
        for f in dataclasses.fields(cls):
            value = getattr(obj, f.name)
            if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
                value = [dataclasses.asdict(v) for v in value]
            yield f"{section}.{f.name}", value, f.metadata["help"]
    for i, dest in enumerate(settings.destinations):
        for f in dataclasses.fields(Destination):
            yield f"destinations[{i}].{f.name}", getattr(dest, f.name), f.metadata["help"]
