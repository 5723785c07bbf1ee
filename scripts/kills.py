"""Exactly once while `optgate serve` is SIGKILLed under load: print the figures (issue 14).

    .venv/bin/python scripts/kills.py [--messages 2000] [--kills 32] [--every 0.4]

The clients keep sending (LMTP, retrying 4xx and broken connections) while the
supervisor and its worker are killed --kills times: the k-th once k/(kills+1) of the
messages' transactions were answered, and at least --every seconds after its start.
Exit 1 unless 0 lost and 0 duplicated (tests/test_faults.py runs 4 kills in CI).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.exactly_once import kill_run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=32)
    parser.add_argument("--every", type=float, default=0.4)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        run = kill_run(args.messages, args.kills, Path(folder), args.every, args.seed)
        figures = asyncio.run(run)
    print("\n".join(figures.lines()))
    return 1 if figures.lost or figures.given_up or figures.duplicated else 0


if __name__ == "__main__":
    sys.exit(main())
