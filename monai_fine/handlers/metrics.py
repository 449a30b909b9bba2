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

from collections.abc import Callable, Sequence

from monai.handlers.ignite_metric import IgniteMetricHandler

from monai_fine.metrics import HausdorffDistance95Metric, OrganDiceMetric

__all__ = ["OrganDice", "HausdorffDistance95"]


class _OrganMetricHandler(IgniteMetricHandler):
    """Shared accessors of the per-organ handlers."""

    @property
    def labels(self) -> tuple[int, ...]:
        """Scored label indices, in column order."""
        return self.metric_fn.labels  # type: ignore[attr-defined,no-any-return]

    @property
    def class_names(self) -> list[str]:
        """Organ names in column order (``class<j>`` of MetricsSaver's CSVs is ``class_names[j]``)."""
        return self.metric_fn.class_names  # type: ignore[attr-defined,no-any-return]


class OrganDice(_OrganMetricHandler):
    """Per-case, per-organ Dice; the value is the mean over organs of the per-organ nanmean over cases."""

    def __init__(
        self,
        labels: Sequence[int] | None = None,
        protocol: str | None = None,
        empty: str = "nan",
        reduction: str = "mean",
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        """
        Args:
            labels: one-hot channel (label) indices to score; mutually exclusive with ``protocol``.
            protocol: ``"btcv13"`` (organs 1..13, the default when ``labels`` is None) or ``"synapse8"``
                (organs 1, 2, 3, 4, 6, 7, 8, 11).
            empty: empty-mask rule. ``"nan"`` (FINE / nnU-Net): Dice is NaN when prediction and ground truth are
                both empty and such cases are skipped in the means. ``"synapse"`` (nnFormer): Dice is 1 when both are
                empty. Dice is 0 when exactly one is empty under both rules.
            reduction: ``"mean"``: mean over organs of the per-organ nanmean over cases (note: MONAI's ``"mean"``
                averages over channels first, which differs when values are NaN); ``"mean_batch"``: per-organ
                nanmean over cases; ``"none"``: the ``(cases, labels)`` values.
            output_transform: callable to extract `y_pred` and `y` from `ignite.engine.state.output` then
                construct `(y_pred, y)` pair, where `y_pred` and `y` can be `batch-first` Tensors or
                lists of `channel-first` Tensors. the form of `(y_pred, y)` is required by the `update()`.
                With MONAI evaluators use ``monai.handlers.from_engine(["pred", "label"])``.
            save_details: whether to save metric computation details per image, for example: the Dice of every
                organ of every image. default to True, will save to `engine.state.metric_details` dict with the
                metric name as key.

        Raises:
            ValueError: for an unknown ``protocol``, ``empty`` rule or ``reduction``.

        See also:
            :py:func:`monai_fine.metrics.compute_organ_dice`
        """
        metric_fn = OrganDiceMetric(labels=labels, protocol=protocol, empty=empty, reduction=reduction)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)


class HausdorffDistance95(_OrganMetricHandler):
    """Per-case, per-organ HD95 in millimetres; the value is the mean over organs of the nanmean over cases.

    Unlike ``monai.handlers.HausdorffDistance``, which calls its metric without ``spacing`` and so reports voxel
    units, the spacing of every case is read at each ``update`` from the affine of that case's ground-truth
    ``MetaTensor`` (column norms, see :py:func:`monai_fine.metrics.spacing_from_meta`). A label without metadata
    raises a ``ValueError`` unless ``spacing`` is given.
    """

    def __init__(
        self,
        labels: Sequence[int] | None = None,
        protocol: str | None = None,
        empty: str = "nan",
        reduction: str = "mean",
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
        spacing: float | Sequence[float] | None = None,
    ) -> None:
        """
        Args:
            labels: one-hot channel (label) indices to score; mutually exclusive with ``protocol``.
            protocol: ``"btcv13"`` (organs 1..13, the default when ``labels`` is None) or ``"synapse8"``
                (organs 1, 2, 3, 4, 6, 7, 8, 11).
            empty: empty-mask rule. ``"nan"`` (FINE / nnU-Net): HD95 is NaN when either mask is empty and such
                cases are skipped in the means. ``"synapse"`` (nnFormer): HD95 is 0 when either mask is empty.
            reduction: ``"mean"``: mean over organs of the per-organ nanmean over cases; ``"mean_batch"``:
                per-organ nanmean over cases; ``"none"``: the ``(cases, labels)`` values.
            output_transform: callable to extract `y_pred` and `y` from `ignite.engine.state.output` then
                construct `(y_pred, y)` pair, where `y_pred` and `y` can be `batch-first` Tensors or
                lists of `channel-first` Tensors. the form of `(y_pred, y)` is required by the `update()`.
                With MONAI evaluators use ``monai.handlers.from_engine(["pred", "label"])``.
            save_details: whether to save metric computation details per image, for example: the HD95 of every
                organ of every image. default to True, will save to `engine.state.metric_details` dict with the
                metric name as key.
            spacing: fixed voxel size in mm used for every case instead of the metadata, e.g. ``1.0`` to report
                voxel units as nnFormer does. Default None: read it from each label.

        Raises:
            ValueError: for an unknown ``protocol``, ``empty`` rule or ``reduction``, or a bad ``spacing``.

        See also:
            :py:func:`monai_fine.metrics.compute_organ_hd95` for the exact HD95 definition.
        """
        metric_fn = HausdorffDistance95Metric(
            labels=labels, protocol=protocol, empty=empty, reduction=reduction, spacing=spacing
        )
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)
