"""The ``theranode`` command line."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from theranode import __version__
from theranode.config.schema import ConfigError, Settings, iter_settings, load_settings
from theranode.service.cli.terminal_text import emit, terminal_lines, terminal_text
from theranode.service.errors import ServiceError
from theranode.service.logs import configure_logging

if TYPE_CHECKING:
    from theranode.service.cohort.imports import ImportReport
    from theranode.service.store.database import Database

logger = logging.getLogger(__name__)


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def _engine_ready_settings(args: argparse.Namespace) -> Settings:
    """Settings the dosimetry engine accepts too: what a job builds is built now; and
    every TLS file of the listener and the destinations loads."""
    from theranode.service.jobs.engine_settings import build_engine_settings
    from theranode.service.tls import check_tls

    settings = _settings(args)
    problems: list[str] = []
    for check in (build_engine_settings, check_tls):
        try:
            check(settings)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems, settings.source)
    return settings


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _engine_ready_settings(args)
    emit(f"# settings in effect (from {settings.source})")
    for name, value, _help in iter_settings(settings):
        emit(f"{name} = {value!r}")
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    from theranode.service.cli.health import check_health

    checks = check_health(_settings(args), args.timeout)
    for check in checks:
        print(terminal_text(("ok   " if check.ok else "FAIL ") + check.message))
    return 0 if all(check.ok for check in checks) else 1


def cmd_serve(args: argparse.Namespace) -> int:
    from theranode.service.app import Node

    settings = _engine_ready_settings(args)
    configure_logging(settings.logging)
    node = Node(settings)
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        logger.info("Signal %d received, shutting down", signum)
        stop_requested.set()

    # Before the start: a SIGTERM that arrives while the node is starting (the
    # listener may already answer) must stop it gracefully, not kill it.
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    node.start()
    logger.info(
        "theranode %s serving as %s on port %d, data in %s (config: %s)",
        __version__, settings.node.ae_title, node.port, settings.data_dir.resolve(),
        settings.source,
    )
    # Timed waits: the main thread runs signal handlers only between them.
    while not stop_requested.wait(1.0):
        pass
    node.stop()
    return 0


def _database(settings: Settings) -> Database | None:
    from theranode.service.store import open_database

    db_path = settings.database_path
    if not settings.database.url and not db_path.exists():
        emit(f"No database at {db_path}: nothing received yet.")
        return None
    return open_database(settings.database_url)


def cmd_worker(args: argparse.Namespace) -> int:
    from theranode.service.jobs import worker

    settings = _engine_ready_settings(args)
    configure_logging(settings.logging)
    worker.run(settings)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from theranode.service.cli.jobs_view import render_dosimetry_status
    from theranode.service.cli.status_view import render_status
    from theranode.service.plan.planner import protocol_from_settings
    from theranode.service.store.index import IndexStore

    settings = _settings(args)
    db = _database(settings)
    if db is None:
        return 0
    index = IndexStore(db)
    for line in render_status(index, protocol_from_settings(settings)):
        print(terminal_text(line))
    for line in render_dosimetry_status(db, settings):
        print(terminal_text(line))
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from theranode.service.cli.jobs_view import render_job, render_jobs

    settings = _settings(args)
    db = _database(settings)
    if db is None:
        return 0
    lines = (render_job(db, args.id) if args.id is not None
             else render_jobs(db, args.limit))
    for line in terminal_lines(lines):
        print(line)
    return 0


def cmd_reprocess(args: argparse.Namespace) -> int:
    from theranode.service.cli.jobs_view import request_reprocess

    settings = _settings(args)
    db = _database(settings)
    if db is None:
        return 1
    targets = request_reprocess(db, args.selector)
    if not targets:
        emit(f"Nothing matches {args.selector!r}: give a PatientID, or a cycle id such as "
             "PATIENTID/1.2 (course 1, cycle 2) as listed by `theranode jobs`.")
        return 1
    for target in targets:
        emit(f"Recompute requested: {target}")
    print("A running node queues the new versions within [jobs] poll_interval_s; "
          "otherwise at its next start.")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from theranode.service.cli.demo import run_demo

    configure_logging_quietly()
    return run_demo(_settings(args), args)


def configure_logging_quietly() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def cmd_outcomes_import(args: argparse.Namespace) -> int:
    from theranode.service.cohort.imports import import_outcome_files
    from theranode.service.store import open_database

    settings = _settings(args)
    db = open_database(settings.database_url)
    report = import_outcome_files(db, [Path(p) for p in args.files])
    for line in terminal_lines(import_lines(report)):
        print(line)
    return 0 if report.ok else 1


def import_lines(report: ImportReport) -> Iterator[str]:
    """``ImportReport.summary()`` line by line, each finding (which quotes the file's
    values, line breaks included) one line."""
    for file in report.files:
        kind = file.kind.value if file.kind else "unrecognised"
        yield f"{file.path}: {kind}, {file.status.value}, {file.rows} row(s)"
        yield from (f"  {issue}" for issue in (*file.errors, *file.warnings))
    yield ("all files accepted" if report.ok
           else "some files were rejected: nothing of them was imported")


def cmd_cohort_run(args: argparse.Namespace) -> int:
    from theranode.service.cohort.scheduler import REPORTS_DIR
    from theranode.service.store import open_database

    settings = _settings(args)
    cohort_report = importlib.import_module("theranode.service.cohort.report")
    db = open_database(settings.database_url)
    report = cohort_report.run_cohort(db, settings.data_dir.resolve() / REPORTS_DIR)
    emit(f"Cohort report written to {report}")
    return 0


def cmd_database_copy(args: argparse.Namespace) -> int:
    from theranode.service.store.copy import copy_database

    settings = _settings(args)
    report = copy_database(settings.database_url, args.to)
    for line in report.lines():
        emit(line)
    print("Next: move the data folder to the shared storage, set [database] url and start "
          "the nodes and workers (docs/scale-out.md).")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="theranode",
        description="DICOM node for automatic Lu-177 DOTATATE post-treatment dosimetry.",
    )
    parser.add_argument("--version", action="version", version=f"theranode {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler: object, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument(
            "--config", type=Path, default=None,
            help="TOML configuration file (default: the shipped config/theranode.toml)",
        )
        sub.set_defaults(handler=handler)
        return sub

    command("serve", cmd_serve, "Run the DICOM node until stopped.")
    command("worker", cmd_worker,
            "Compute dosimetry jobs for nodes sharing a PostgreSQL database ([database] url; "
            "docs/scale-out.md) until stopped.")
    command("check-config", cmd_check_config, "Validate the configuration and print it.")
    health = command("health", cmd_health,
                     "Check that the node on this machine is alive: its database opens and its "
                     "listener answers (the Docker health check; exit status 0 or 1).")
    health.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for the listener")
    command("status", cmd_status,
            "Show each patient's cycles, what is missing, jobs and result deliveries.")
    jobs = command("jobs", cmd_jobs, "List dosimetry jobs with their state and deliveries.")
    jobs.add_argument("id", type=int, nargs="?", default=None,
                      help="show one job in detail: inputs, log tail, delivery per object")
    jobs.add_argument("--limit", type=int, default=50, help="how many recent jobs to list")
    reprocess = command("reprocess", cmd_reprocess,
                        "Recompute a patient's cycles (or one cycle) as new result versions.")
    reprocess.add_argument("selector", help="PatientID, or cycle id PATIENTID/COURSE.CYCLE")
    demo = command("demo", cmd_demo,
                   "Send a synthetic course to a temporary node of its own (or to a running "
                   "node: --node) and compare its results to the analytic truth.")
    add_demo_arguments(demo)
    outcomes = commands.add_parser("outcomes", help="Outcome data for cohort statistics.")
    outcome_commands = outcomes.add_subparsers(dest="outcomes_command", required=True)
    imports = outcome_commands.add_parser("import", help="Import outcome CSV files.")
    imports.add_argument("files", nargs="+", help="CSV files (labs, lesion volumes, survival)")
    imports.add_argument("--config", type=Path, default=None, help="TOML configuration file")
    imports.set_defaults(handler=cmd_outcomes_import)
    cohort = commands.add_parser("cohort", help="Cohort statistics.")
    cohort_commands = cohort.add_subparsers(dest="cohort_command", required=True)
    run = cohort_commands.add_parser("run", help="Compute the cohort report now.")
    run.add_argument("--config", type=Path, default=None, help="TOML configuration file")
    run.set_defaults(handler=cmd_cohort_run)
    database = commands.add_parser("database", help="The node's database.")
    database_commands = database.add_subparsers(dest="database_command", required=True)
    copy = database_commands.add_parser(
        "copy", help="Copy the node's SQLite database into an empty PostgreSQL database "
        "(stop the node first; docs/scale-out.md).")
    copy.add_argument("--to", required=True, metavar="URL",
                      help="postgresql://user@host:5432/name of an empty database; leave the "
                      "password out and let libpq read it from PGPASSWORD or ~/.pgpass")
    copy.add_argument("--config", type=Path, default=None,
                      help="TOML configuration file of the node (its SQLite database is copied)")
    copy.set_defaults(handler=cmd_database_copy)
    return parser


def node_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:11112`` for IPv6) of ``theranode demo --node``."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(
            f"expected HOST:PORT such as 127.0.0.1:11112, got {text!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def add_demo_arguments(demo: argparse.ArgumentParser) -> None:
    demo.add_argument("--node", type=node_address, default=None, metavar="HOST:PORT",
                      help="send to this running node (it must list the demo as a destination: "
                      "--print-destination) instead of starting a temporary node")
    demo.add_argument("--host", default=None,
                      help="host of a running node (as --node; port from --port or the config)")
    demo.add_argument("--port", type=int, default=None,
                      help="port of a running node on --host (default 127.0.0.1): as --node")
    demo.add_argument("--called-ae", default=None,
                      help="AE title of the node (default: [node] ae_title of the config)")
    demo.add_argument("--listen-port", type=int, default=None,
                      help="port on which the demo receives the results (default: 11113 with a "
                      "running node, a free port with the temporary node)")
    demo.add_argument("--ae-title", default="THERANODE-DEMO",
                      help="AE title of the demo's receiver (the node's destination) and sender")
    demo.add_argument("--work-dir", type=Path, default=None,
                      help="folder for the synthetic course, the received results and the "
                      "temporary node's data and log (default: a new temporary folder)")
    demo.add_argument("--cycles", type=int, nargs="+", default=[1, 2],
                      help="cycles of the synthetic course to send (1-4)")
    demo.add_argument("--size", choices=("small", "clinical"), default="small",
                      help="image grids: small (seconds) or clinical (minutes)")
    demo.add_argument("--timeout", type=float, default=900.0,
                      help="seconds to wait for the results")
    demo.add_argument("--print-destination", action="store_true",
                      help="print the [[destinations]] entry a running node needs, then exit")


def main(argv: Sequence[str] | None = None) -> int:
    # Everything theranode writes (archive, database, logs, results, reports)
    # is for its own user only: files 0600, folders 0700 (README, "Data folder").
    os.umask(0o077)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        emit(f"theranode: {exc}", file=sys.stderr)
        return 2
    except ServiceError as exc:  # may quote what a peer sent: kept on one line
        print(terminal_text(f"theranode: {exc}"), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
