"""``python -m autoorgan``: the same as the ``autoorgan`` command."""

from autoorgan.cli.app import main

if __name__ == "__main__":
    main()
