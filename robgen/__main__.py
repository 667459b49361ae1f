"""`python -m robgen ...`: the command line (see the package robgen/cli/)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
