"""Helpers for the course *GPT-2 from first principles to a served model*.

Each module holds one concern; each public function's docstring names the notebook
that introduces it. Import the modules you need, e.g. ``from helpers import settings``.
"""

__version__ = "0.1.0"
