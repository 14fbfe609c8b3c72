"""AWS vendor pieces: the event-stream codec and SigV4 signing (pure, no I/O)."""
