"""What the training loop needs from a task, and the errors tasks raise.

``visattn.train`` runs one loop for every task; a task supplies the data and the task-specific pieces:

* ``train_set`` / ``val_set``: map-style datasets whose items are ``(input, target)`` before augmentation;
* ``model_overrides()``: config fields the data decides (``num_classes`` for classification);
* ``augment(inputs, targets, generator, batch_size)``: batch augmentation on tensors, random numbers drawn for the
  whole *global* batch from ``generator`` and sliced by the caller, so every process layout sees the same batch;
* ``prepare_eval(inputs)``: the deterministic eval transform;
* ``loss(outputs, targets)`` and ``train_stats(outputs, targets)`` (sums to report, e.g. correct predictions);
* ``evaluate(model, ...)``: metrics on the validation split, with a ``main_metric`` that higher is better;
* ``model_meta()``: what inference needs besides the weights (class names, input size, normalisation).

Classification (``tasks/classification.py``) is the first task; image restoration and few-shot segmentation follow
the same interface.
"""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """A problem with the user's data (missing directory, no images, unknown class): a one-line, actionable message."""
