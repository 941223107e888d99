"""regctl: the operator's command-line tool for regd and any other OCI registry."""

__version__ = "0.1.0"
