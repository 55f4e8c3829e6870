"""The test suite. Its processes (pytest's, and the children that import this
package: ``python -m tests.<module>``, the gevent slot cases) hide hiredis, so
they test redis-py's own parser, what a plain install gets, even where hiredis is
installed (the test extra installs it); ``REDISPOOL_TEST_HIREDIS=1`` runs them on
hiredis instead, as ``test_hiredis.py`` does for its children. The other children
(``python -c`` scripts, gunicorn, the demo) use whatever is installed: hiredis
in CI, so both parsers run there."""

import os
import sys
import warnings

if os.environ.get("REDISPOOL_TEST_HIREDIS") != "1":
    if "redis" in sys.modules:  # e.g. bench/conftest.py ran first
        if getattr(sys.modules.get("redis.utils"), "HIREDIS_AVAILABLE", False):
            warnings.warn("redis was imported before the tests: they run on hiredis", stacklevel=1)
    else:
        sys.modules["hiredis"] = None  # type: ignore[assignment]  # import fails: not there
