"""The redis tier: the queue store against real redis-server processes."""
