"""Soak `optgate serve --workers 2` under mixed and hostile traffic; print the figures.

    .venv/bin/python scripts/soak.py [--minutes 30]

Exit 1 when a reply was out of place, a traceback was logged, or memory or open file
descriptors grew after the warm-up (the same bounds as tests/test_soak.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.soak import soak
from tests.test_soak import FD_GROWTH, RSS_GROWTH_KIB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        report = asyncio.run(soak(args.minutes * 60, Path(folder), sample_every=10.0))
    print("\n".join(report.lines()))
    for line in report.unexpected[:20]:
        print(f"unexpected: {line}")
    ok = (
        not report.unexpected
        and report.tracebacks == 0
        and report.fd_growth() <= FD_GROWTH
        and report.rss_growth_kib() <= RSS_GROWTH_KIB
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
