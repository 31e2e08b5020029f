"""The notebook's Keras 2.1.5 .h5 files -> vfa checkpoints (read with h5py; no TensorFlow, no code run)."""
