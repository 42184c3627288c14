"""The data challenges, one module per id."""
