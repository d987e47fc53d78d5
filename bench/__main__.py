"""`python -m bench`: run every benchmark part and print its table."""

from __future__ import annotations

import sys

from bench import core


def main() -> int:
    return core.main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
