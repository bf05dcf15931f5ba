"""``python -m autoorgan``: the same as the ``autoorgan`` command."""

from autoorgan.cli import main

if __name__ == "__main__":
    main()
