"""Application tasks (one module each); importing this package registers them all.

The import order is the order tasks are listed in help and error messages.
"""
from lmforge.tasks import classification, ner, qa  # noqa: F401  (each module registers its tasks)
from lmforge.tasks import seq2seq  # noqa: F401
from lmforge.tasks import chat  # noqa: F401
from lmforge.tasks.registry import TASKS, routed_tasks, task_class, task_for_pipeline  # noqa: F401
