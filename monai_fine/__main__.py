# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""``python -m monai_fine <command> [--args]``; ``python -m monai_fine --help`` lists the commands."""

import sys

import fire

from monai_fine.cli import ARGPARSE_COMMANDS, COMMANDS

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ARGPARSE_COMMANDS:  # experiments parse their own options
        COMMANDS[sys.argv[1]](*sys.argv[2:])
    else:
        fire.Fire(COMMANDS)
