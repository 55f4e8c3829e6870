"""Benchmarks share the tests' real redis-server fixtures."""

pytest_plugins = ["redispool.testing"]
