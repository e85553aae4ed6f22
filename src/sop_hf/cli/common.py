"""What every ``sop-hf`` subcommand shares: the help format (``help_formatter.py``), argument parsing and logging to
stderr."""

import logging
import sys

from transformers import HfArgumentParser

from ..help_formatter import HelpFormatter


def parse(dataclass_types, prog: str, description: str, argv: list[str] | None) -> tuple:
    """The dataclasses of ``argv`` (``sys.argv[1:]`` when None); ``--help`` shows ``description`` and defaults."""
    description = (description or "").replace("``", "`")  # docstrings use reST literals
    parser = HfArgumentParser(dataclass_types, prog=prog, description=description, formatter_class=HelpFormatter)
    argv = sys.argv[1:] if argv is None else list(argv)
    return parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)


def usage_exit_code(argv: list[str], commands, usage: str) -> int | None:
    """When ``argv`` names none of ``commands``: print ``usage`` (stdout for ``--help``, else stderr) and return the
    exit code (0 for help, 2 otherwise); None when it names one."""
    if argv and argv[0] in commands:
        return None
    asked_for_help = bool(argv) and argv[0] in ("-h", "--help")
    print(usage, file=sys.stdout if asked_for_help else sys.stderr)
    return 0 if asked_for_help else 2


def setup_logging() -> None:
    """INFO logs of sop_hf on stderr (results go to stdout)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("sop_hf").setLevel(logging.INFO)
