"""Cross-validation: `vfa.cv.run.cross_validate` trains the folds, `vfa.cv.summary` pools them."""
from vfa.cv.run import cross_validate  # noqa: F401
