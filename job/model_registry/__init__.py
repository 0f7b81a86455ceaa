"""The Kubeflow Model Registry REST client (API v1 and v1alpha3)."""
