"""Torch-free statistics shared by training, evaluation and cohort analyses: the notebook's
med_metrics and one definition of each rate (metrics), confidence intervals, DeLong, McNemar,
thresholds and calibration (accuracy)."""
