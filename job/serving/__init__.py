"""KServe storage-initializer mode: ``model-sync <storage-uri> <dest-dir>`` (see ``job.serving.initializer``)."""
