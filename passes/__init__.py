"""passc's built-in passes, one module per pass family. Importing this package registers them."""

from passc.passes import canonicalize

__all__ = ["canonicalize"]
