"""model-sync: stream an ML model from a source to a destination and record it in Kubeflow Model Registry."""

__version__ = "0.1.0"
