# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Ignite metric handlers for per-organ Dice and HD95 in millimetres (BTCV 13-organ and Synapse 8-organ protocols).

Both handlers are thin :py:class:`monai.handlers.IgniteMetricHandler` subclasses, used like MONAI's ``MeanDice``::

    OrganDice(protocol="synapse8", output_transform=from_engine(["pred", "label"])).attach(evaluator, "dice")
    HausdorffDistance95(protocol="synapse8", output_transform=from_engine(["pred", "label"])).attach(evaluator, "hd95")

``engine.state.metric_details[name]`` is a ``(num_cases, num_labels)`` tensor, one row per case in the order the
engine saw them and one column per label in the order of the handler's ``labels``. MONAI's ``MetricsSaver`` writes
it to ``<name>_raw.csv`` with generic column headers ``class0, class1, ...`` (it has no option for class names), so
column ``class<j>`` is organ ``labels[j]`` (``handler.class_names[j]``), followed by a ``mean`` column holding the
nanmean over the organs of each case.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from monai.handlers.ignite_metric import IgniteMetricHandler

from monai_fine.metrics import HausdorffDistance95Metric, OrganDiceMetric, _OrganMetric

__all__ = ["OrganDice", "HausdorffDistance95"]


class _OrganMetricHandler(IgniteMetricHandler):
    """Ignite handler of a per-organ metric (``metric_class``); shared constructor and accessors.

    Args:
        output_transform: callable to extract ``y_pred`` and ``y`` from ``ignite.engine.state.output`` then
            construct the ``(y_pred, y)`` pair, where ``y_pred`` and ``y`` can be batch-first Tensors or lists of
            channel-first Tensors. With MONAI evaluators use ``monai.handlers.from_engine(["pred", "label"])``.
        save_details: whether to save the per-case, per-organ values to ``engine.state.metric_details[name]``.
        metric_kwargs: keywords of ``metric_class``: ``labels``, ``protocol``, ``empty``, ``reduction`` (and
            ``spacing`` for :py:class:`HausdorffDistance95`), documented once in :py:mod:`monai_fine.metrics`.

    Raises:
        ValueError: for an unknown ``protocol``, ``empty`` rule or ``reduction``, or a bad ``spacing``.
    """

    metric_class: type[_OrganMetric]

    def __init__(
        self, output_transform: Callable = lambda x: x, save_details: bool = True, **metric_kwargs: Any
    ) -> None:
        metric_fn = self.metric_class(**metric_kwargs)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)

    @property
    def labels(self) -> tuple[int, ...]:
        """Scored label indices, in column order."""
        return self.metric_fn.labels  # type: ignore[attr-defined,no-any-return]

    @property
    def class_names(self) -> list[str]:
        """Organ names in column order (``class<j>`` of MetricsSaver's CSVs is ``class_names[j]``)."""
        return self.metric_fn.class_names  # type: ignore[attr-defined,no-any-return]


class OrganDice(_OrganMetricHandler):
    """Per-case, per-organ Dice (:py:func:`monai_fine.metrics.compute_organ_dice`); the value is the mean over
    organs of the per-organ nanmean over cases. Arguments: see :py:class:`_OrganMetricHandler`."""

    metric_class = OrganDiceMetric


class HausdorffDistance95(_OrganMetricHandler):
    """Per-case, per-organ HD95 in millimetres (:py:func:`monai_fine.metrics.compute_organ_hd95` for the exact
    definition); the value is the mean over organs of the nanmean over cases.

    Unlike ``monai.handlers.HausdorffDistance``, which calls its metric without ``spacing`` and so reports voxel
    units, the spacing of every case is read at each ``update`` from that case's ground-truth ``MetaTensor`` by
    :py:func:`monai_fine.metrics.spacing_from_meta` (MONAI's ``affine_to_spacing`` of its affine, as
    ``MetaTensor.pixdim``). A label without metadata raises a ``ValueError`` unless ``spacing`` is given.

    Arguments: see :py:class:`_OrganMetricHandler`, plus ``spacing``: a fixed spacing used for every case instead of
    the metadata (see :py:mod:`monai_fine.metrics`), e.g. ``1.0`` to report voxel units as nnFormer does.
    """

    metric_class = HausdorffDistance95Metric
