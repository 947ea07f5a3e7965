"""Evaluation protocols for dense features: linear probe, k-means + Hungarian, segment retrieval.

Each task is a class with ``run(train, evaluation, num_classes, class_names, refine) -> TaskResult``
(``train`` / ``evaluation`` are :class:`~usgs.evaluation.features.FeatureSource` objects), picked by
Hydra ``_target_`` in ``conf/task/*.yaml`` and driven by :func:`usgs.run.evaluate.evaluate`.
"""
