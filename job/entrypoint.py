"""Alias for manifests written for the upstream image, which runs ``python -m job.entrypoint``."""

from job.__main__ import main

if __name__ == "__main__":
    main()
