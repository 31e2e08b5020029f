"""Inference: predictions over files, the backend registry (torch, bf16, compile, ONNX, int8), ONNX
export and test-time augmentation."""
