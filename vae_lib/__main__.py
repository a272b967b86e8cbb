"""`python -m vae_lib`: the command line (see vae_lib/cli.py and docs/cli.md)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
