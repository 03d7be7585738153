"""Repository tools, apart from the product: the mutation pass over the test suite, and the
studies behind the figures in docs/ (class balance, unknown images). Run from the repository
root as ``python -m tools.NAME``."""
