"""`python -m generatect_kedro` is the `generatect` command."""

from generatect_kedro.cli import main

if __name__ == "__main__":
    main()
