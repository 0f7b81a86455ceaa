"""Stand-ins for services the model-sync job talks to (see README.md)."""
