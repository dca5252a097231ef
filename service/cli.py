"""The ``theranode`` command line."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from config.schema import ConfigError, Settings, iter_settings, load_settings
from service import __version__
from service.errors import ServiceError
from service.logs import configure_logging

logger = logging.getLogger(__name__)


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    print(f"# settings in effect (from {settings.source})")
    for name, value, _help in iter_settings(settings):
        print(f"{name} = {value!r}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from service.app import Node

    settings = _settings(args)
    configure_logging(settings.logging)
    node = Node(settings)
    node.start()
    logger.info(
        "theranode %s serving as %s on port %d, data in %s (config: %s)",
        __version__, settings.node.ae_title, node.port, settings.data_dir.resolve(),
        settings.source,
    )

    def shutdown(signum: int, frame: FrameType | None) -> None:
        logger.info("Signal %d received, shutting down", signum)
        node.stop()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    node.wait()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from service.regroup import rules_from_settings
    from service.status import render_status
    from service.store import open_database
    from service.store.index import IndexStore

    settings = _settings(args)
    db_path = settings.data_dir / "theranode.db"
    if not db_path.exists():
        print(f"No database at {db_path}: nothing received yet.")
        return 0
    index = IndexStore(open_database(db_path))
    for line in render_status(index, rules_from_settings(settings.grouping)):
        print(line)
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
    command("check-config", cmd_check_config, "Validate the configuration and print it.")
    command("status", cmd_status, "Show each patient's cycles, time points and what is missing.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print(f"theranode: {exc}", file=sys.stderr)
        return 2
    except ServiceError as exc:
        print(f"theranode: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
