"""Datasets: samples from folders and manifests, the one preprocessing path (transforms), augmentation,
splits, data checks and the augmentation preview. Import the modules (vfa.data.samples, ...); this
package imports nothing, so `vfa.data.samples` stays free of torch."""
