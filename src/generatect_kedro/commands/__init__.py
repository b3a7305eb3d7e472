"""`generatect` sub-commands that are large enough for their own module (registered in `cli.py`)."""
