"""Tasks the training loop runs: data, augmentation, loss and metrics per task (see ``tasks/base.py``).

Submodules import torch; this package stays light so the CLI can list task names without it.
"""

# task name -> "module:factory" building the task from the CLI's parsed arguments
TASKS = {"classification": "visattn.tasks.classification"}

__all__ = ["TASKS"]
