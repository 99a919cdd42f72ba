"""Subcommands of the ``ssdfa`` CLI, one module each (see ``ssdfa.cli``)."""
