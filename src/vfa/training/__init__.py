"""Training on Lightning: the module, the data module, the loop and its checks, SGDR, the LR finder,
curves."""
