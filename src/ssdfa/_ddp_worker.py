"""One worker of ``ssdfa train --nproc N``: ``python -m ssdfa._ddp_worker CONFIG.json [--resume] [--quiet]``,
started by :func:`ssdfa.distributed.launch` through ``torch.distributed.run``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .distributed import die_with_parent, rank, session
from .errors import Diverged, InputError


def main(argv: list[str]) -> int:
    die_with_parent()  # first: a kill -9 of the launcher leaves no rank writing on alone
    from .training import TrainConfig, run

    cfg = TrainConfig.from_dict(json.loads(Path(argv[0]).read_text(encoding="utf-8")))
    quiet = "--quiet" in argv
    with session(cfg.device):
        me = rank()

        def log(msg):
            if me == 0 and not quiet:
                print(msg, file=sys.stderr, flush=True)

        try:
            run(cfg, resume="--resume" in argv, log=log)
        except Diverged as exc:  # every rank decides alike; rank 0 wrote summary.json
            if me == 0:
                (Path(argv[0]).parent / "diverged.txt").write_text(str(exc), encoding="utf-8")
            return 0  # not a crash: the launcher raises Diverged from diverged.txt
        except (InputError, FileNotFoundError) as exc:
            if me == 0:
                print(f"ssdfa: {exc}", file=sys.stderr, flush=True)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
