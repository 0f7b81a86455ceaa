"""The settings chain (CLI args > env vars > credential files > defaults), the credential readers and the metadata ConfigMap."""
