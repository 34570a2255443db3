"""passc's built-in passes, one module per pass family. Importing this package registers them."""

from passc.passes import canonicalize, fold_linear_blocks, fuse

__all__ = ["canonicalize", "fold_linear_blocks", "fuse"]
