"""regd: a container registry serving the OCI Distribution API."""

__version__ = "0.1.0"
