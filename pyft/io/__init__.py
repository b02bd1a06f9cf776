"""File-to-file operations on models, done in Rust: merging adapters (and, next, export)."""

from pyft.io.merge import merge, parse_size

__all__ = ["merge", "parse_size"]
