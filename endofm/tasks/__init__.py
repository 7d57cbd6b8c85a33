"""Applying models to data: feature extraction and frozen-feature probes, and the downstream tasks.

A task (:class:`~endofm.tasks.base.Task`) is declared once, in its module (:mod:`~endofm.tasks.classify`,
:mod:`~endofm.tasks.segment`, :mod:`~endofm.tasks.detect`), which registers it in :mod:`~endofm.tasks.registry`
(importing this package imports the three, in that order).
What the tasks share: :mod:`~endofm.tasks.config` (configs), :mod:`~endofm.tasks.finetune` (the fine-tuning
recipe and driver), :mod:`~endofm.tasks.folder` (the fine-tuned model folder), :mod:`~endofm.tasks.results`
(tables, JSON), :mod:`~endofm.tasks.corpus` (the synthetic corpus of every task); applying any fine-tuned
model: :mod:`~endofm.tasks.loading` (loading, evaluation),
:mod:`~endofm.tasks.predict` (a video), :mod:`~endofm.tasks.reproduce` (the paper's table).
"""

# The shipped tasks register themselves on import; this order is the order of TASKS.
from endofm.tasks import classify, segment, detect  # noqa: F401, I001
