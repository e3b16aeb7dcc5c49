"""`python -m genpercept_cli.cli`: the same as the `genpercept` console script."""

from . import main

if __name__ == "__main__":
    main()
