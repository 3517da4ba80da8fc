"""Operations: the admin HTTP server, debug views, metrics, logs."""
