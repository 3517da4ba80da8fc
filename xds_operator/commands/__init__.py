"""The CLI commands other than `serve`: render, status, bootstrap, labels."""
