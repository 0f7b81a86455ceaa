"""The benchmark behind ``make bench``: model-sync against the tools users would otherwise script.

``python -m tests.bench.run --size-mib 1024 --runs 3`` starts SeaweedFS, CNCF distribution and an http server on
127.0.0.1, generates a model, and times model-sync and its peers (``tests.bench.peers``) on the same servers and
bytes; see :mod:`tests.bench.run` for what is measured and how.
"""
