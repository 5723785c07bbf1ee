"""Exactly once through a faulty next hop: print the figures (issue 14).

    .venv/bin/python scripts/faults.py [--messages 2000] [--rate 0.025]

Each fault kind (refuse, 421, 451, 452, 554, drop before or after the reply, stall)
happens at --rate; the client retries 4xx. Exit 1 unless 0 lost, 0 duplicated and no
copy delivered after the client was told it was refused (tests/test_faults.py in CI).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.exactly_once import fault_run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=0.025)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        figures = asyncio.run(fault_run(args.messages, args.rate, Path(folder), args.seed))
    print("\n".join(figures.lines()))
    bad = figures.lost or figures.given_up or figures.duplicated or figures.refused_but_delivered
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
