"""`python -m robgen ...`: the command line (see robgen/cli.py)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
