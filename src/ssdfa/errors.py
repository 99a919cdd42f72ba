"""Every error ssdfa raises on purpose, in one place, so callers (and the CLI) catch by kind.

``SsdfaError`` is the root.  ``InputError`` means "the input cannot work" (the CLI prints one line
and exits 2); ``Diverged`` means the rule's loss went NaN or infinite (exit 3).  Errors that
subclass ``ValueError`` or ``RuntimeError`` keep doing so, for code that caught them that way.
"""

from __future__ import annotations

from dataclasses import dataclass


class SsdfaError(Exception):
    """Root of ssdfa's own errors."""


class InputError(SsdfaError):
    """Input that cannot work (a config, a file, an option): one clear message, exit status 2."""


class UserError(InputError):
    """A problem with a command's arguments."""


class ConfigError(InputError, ValueError):
    """A config value that cannot work; the message names the field and the valid choices."""


class RuleOptionError(InputError, ValueError):
    """An option a rule does not take, or a bad value for one it does."""


class FeedbackConfigError(InputError, ValueError):
    """An impossible or malformed feedback request (sparsity, connections, rank)."""


@dataclass
class Problem:
    """One thing ``convert`` cannot train: where, which module, why, and what to do."""

    path: str
    module: str
    why: str
    fix: str

    def __str__(self):
        where = self.path or "<model>"
        return f"  - {where} ({self.module}): {self.why}. {self.fix}"


class UnsupportedModelError(InputError, ValueError):
    """The model holds modules or a layout that ``convert`` cannot train; lists all of them."""

    def __init__(self, problems: list[Problem], method: str):
        self.problems = problems
        lines = "\n".join(str(p) for p in problems)
        super().__init__(
            f"ssdfa.convert(method={method!r}) cannot train this model; {len(problems)} problem(s):\n{lines}"
        )


class ProbeError(InputError, ValueError):
    """A probe forward with a made-up or given input failed."""


class PretrainedError(InputError, ValueError):
    """``init_from`` names no usable run, or weights that do not fit the model."""


class CheckpointError(InputError, ValueError):
    """A checkpoint that cannot be used: unreadable, incomplete, or of another run or model."""


class RunFileError(InputError, ValueError):
    """A file of a run, compare, reproduce or sweep directory that cannot be read as one."""


class SweepError(InputError, ValueError):
    """A sweep directory holds cells of another setup."""


class PipelineError(InputError, ValueError):
    """A pipeline that cannot be built as asked (message says what to do)."""


class DatasetError(InputError):
    """A dataset that cannot be used as asked (message says what to do)."""


class DatasetNotFound(DatasetError):
    """The files of a dataset are not in any searched place."""


class DatasetCorrupt(DatasetError):
    """A dataset file exists but is truncated, malformed or fails its checksum."""


class RunDirError(InputError):
    """A run directory that cannot be used (busy, not creatable, not writable): exit status 2."""


class RunDirBusy(RunDirError):
    """Another process holds the directory's lock."""


class DistributedSetupError(InputError, RuntimeError):
    """The process group cannot start (e.g. MASTER_PORT is taken): one line, exit status 2."""


class Diverged(SsdfaError, RuntimeError):
    """The loss became NaN or infinite; the run directory keeps the last good checkpoint."""
