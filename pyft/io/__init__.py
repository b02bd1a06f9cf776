"""File-to-file operations on models, done in Rust: merging adapters (and, next, export)."""

from pyft.io.merge import is_quantized, merge, nf4_note, parse_size

__all__ = ["is_quantized", "merge", "nf4_note", "parse_size"]
