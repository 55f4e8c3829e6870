"""The test suite. Its processes (pytest's and the children the tests start as
``python -m tests.<module>``) hide hiredis, so that they test redis-py's own
parser, what a plain install gets, even where hiredis is installed (the test
extra installs it); ``REDISPOOL_TEST_HIREDIS=1`` runs them on hiredis instead, as
``test_hiredis.py`` does for its children. Servers the tests start (gunicorn, the
demo) use whatever is installed."""

import os
import sys
import warnings

if os.environ.get("REDISPOOL_TEST_HIREDIS") != "1":
    if "redis" in sys.modules:  # e.g. bench/conftest.py ran first
        if getattr(sys.modules.get("redis.utils"), "HIREDIS_AVAILABLE", False):
            warnings.warn("redis was imported before the tests: they run on hiredis", stacklevel=1)
    else:
        sys.modules["hiredis"] = None  # type: ignore[assignment]  # import fails: not there
