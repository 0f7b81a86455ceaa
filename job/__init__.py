"""model-sync: stream an ML model from a source to a destination and record it in Kubeflow Model Registry."""

from job import tuning

__version__ = "0.1.0"

tuning.apply()  # before anything imports httpx or botocore (job.tuning says why)
