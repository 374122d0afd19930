"""Exercise checks with automatic feedback: ``check_...(answer)`` prints a verdict, never a traceback.

Introduced in ``01_mse_and_gradient_descent.ipynb``; later notebooks add their own checks
with the same core, :func:`_check`. Each check prints one of:

* ``✅ correct`` (and how close the answer was to the reference),
* ``❌ not yet`` with how far off the answer is and a hint,
* ``⏳ not done yet`` while the answer is still ``None`` or ``...`` (the workshop build
  replaces the solutions with ``answer = None  # TODO``).

The references are computed here (with PyTorch, transformers, tokenizers or the course's own tested
helpers), never typed in.
"""

from helpers.exercises.core import *  # noqa: F403
from helpers.exercises.core import _call, _check, _not_done, _to_array  # noqa: F401
from helpers.exercises.nb00_setup import *  # noqa: F403
from helpers.exercises.nb01_mse_and_gradient_descent import *  # noqa: F403
from helpers.exercises.nb02_data_preparation import *  # noqa: F403
from helpers.exercises.nb03_inside_gpt2 import *  # noqa: F403
from helpers.exercises.nb04_pretraining import *  # noqa: F403
from helpers.exercises.nb05_finetuning_gpt2 import *  # noqa: F403
from helpers.exercises.nb06_lora import *  # noqa: F403
from helpers.exercises.nb07_evaluation import *  # noqa: F403
from helpers.exercises.nb08_sentiment import *  # noqa: F403
from helpers.exercises.nb09_assistant import *  # noqa: F403
from helpers.exercises.nb10_deployment import *  # noqa: F403
from helpers.exercises.nb11_iteration import *  # noqa: F403
