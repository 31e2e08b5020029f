"""Evaluation of a model on labelled data: metrics with CIs, thresholds, calibration, paired
comparison, the report."""
