"""Storage backends. Each module imports its heavy dependency itself, so
importing one backend never loads the others' libraries."""
