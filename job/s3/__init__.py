"""The S3 protocol: one client per endpoint with its error mapping and retries, and multipart parts."""
