"""The ``--help`` format of every sop_hf command (``sop-hf`` subcommands and the pretraining job).

A leaf module (it imports only argparse), so ``cli/`` and ``pretrain/`` share it without importing each other.
"""

from argparse import ArgumentDefaultsHelpFormatter, RawDescriptionHelpFormatter


class HelpFormatter(RawDescriptionHelpFormatter, ArgumentDefaultsHelpFormatter):
    """Keeps the description's line breaks and shows the default of every option that has one."""

    def _get_help_string(self, action):
        if action.required or action.default is None:
            return action.help
        return super()._get_help_string(action)


__all__ = ["HelpFormatter"]
