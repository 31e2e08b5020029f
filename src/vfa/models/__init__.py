"""Networks: the notebook's VFANet on any timm backbone, vfa's small backbones, the layer summary and
the Keras .h5 import."""
