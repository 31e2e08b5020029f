"""The cohort analysis (`vfa cohort`): torch-free, so it runs on predictions made elsewhere."""
