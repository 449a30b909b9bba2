# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""``python -m monai_fine <command> [--args]`` (the same as the console script ``monai-fine``); ``--help`` lists the
commands."""

import sys

from monai_fine.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m monai_fine"))
