# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""``python -m monai_fine <command> [--args]``; ``python -m monai_fine --help`` lists the commands."""

import fire

from monai_fine.cli import COMMANDS

if __name__ == "__main__":
    fire.Fire(COMMANDS)
