"""Priors: per-image label maps computed without (target) labels, cached for training.

``kmeans`` (seed recipe and fast torch version), ``morphology`` (composable smoothing),
``saliency`` (unsupervised and supervised foreground), ``crf`` (the suite's dense CRF),
``cache`` (atomic, resumable, hashed PNG cache) and ``report`` (quality vs ground truth).
``python make_priors.py prior=<name> data=<dataset>`` runs them (``usgs.run.priors``).
"""
