"""`python -m genpercept_cli` (and `torchrun ... -m genpercept_cli`): the `genpercept` command."""

from .cli import main

if __name__ == "__main__":
    main()
