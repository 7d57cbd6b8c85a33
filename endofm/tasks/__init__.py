"""Applying models to data: feature extraction and frozen-feature probes, and the downstream tasks.

A task (:class:`~endofm.tasks.base.Task`) is declared once, in its module (:mod:`~endofm.tasks.classify`,
:mod:`~endofm.tasks.segment`, :mod:`~endofm.tasks.detect`), and listed in :mod:`~endofm.tasks.registry`.
What the tasks share: :mod:`~endofm.tasks.config` (configs), :mod:`~endofm.tasks.finetune` (the fine-tuning
recipe and driver), :mod:`~endofm.tasks.folder` (the fine-tuned model folder), :mod:`~endofm.tasks.results`
(tables, JSON); applying any fine-tuned model: :mod:`~endofm.tasks.loading` (loading, evaluation),
:mod:`~endofm.tasks.predict` (a video), :mod:`~endofm.tasks.reproduce` (the paper's table).
"""
