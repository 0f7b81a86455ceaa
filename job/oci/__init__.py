"""The OCI distribution protocol: client, auth and error mapping, image references, TLS trust, the KServe modelcar layout."""
