"""Explanations: class-activation maps (methods registry), their geometry, localization scores,
rendering and the heatmap writer."""
