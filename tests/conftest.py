"""Shared fixtures: a real redis-server (see redispool.testing)."""

pytest_plugins = ["redispool.testing"]
