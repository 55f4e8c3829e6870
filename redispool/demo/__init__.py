"""The demo public API: login with lockout and rate limiting, cached posts,
analytics counters and the health endpoint, on Flask (see ``app.py``)."""
