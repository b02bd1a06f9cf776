"""Command-line entry points (``pyft``)."""
