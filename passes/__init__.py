"""passc's built-in passes, one module per pass family. Importing this package registers them."""

from passc.passes import assign_bits, canonicalize, expand_recurrent, fold_linear_blocks, fuse

__all__ = ["assign_bits", "canonicalize", "expand_recurrent", "fold_linear_blocks", "fuse"]
