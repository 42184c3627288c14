"""The optimization challenges, one module per id."""
