"""The model challenges, one module per id."""
