"""The Python API: what the command-line drivers do, as functions.

  import superconv
  model, variables, config = superconv.load_checkpoint("runs/quick")

`load_checkpoint` gives a trained model beside its variables and config.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from superconv import checkpoint as checkpoint_lib
from superconv import models


def load_checkpoint(workdir: str, step: int | None = None):
  """(model, variables, config) of a checkpoint, for notebooks and tools.

  Args:
    workdir: a run's directory.
    step: the checkpoint step (default: the latest complete one).

  Returns:
    model: the Flax module (no pmap axis: call it directly, e.g.
      `model.apply(variables, x, train=False)` on images normalized with
      the train split's mean/std, which the checkpoint's meta records).
    variables: {'params', 'batch_stats'} as numpy arrays.
    config: the run's resolved config (an ml_collections.ConfigDict).

  Raises:
    checkpoint.CheckpointError: no complete checkpoint (the message names
      the path).
  """
  restored = checkpoint_lib.restore(workdir, step)
  state = restored.state
  config = ml_collections.ConfigDict(restored.config)
  num_classes = restored.meta.get("num_classes")
  if num_classes is None:  # Checkpoints without meta: the head's width.
    num_classes = np.asarray(state["params"]["head"]["bias"]).shape[-1]
  model = models.from_config(config, int(num_classes))
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  return model, variables, config
