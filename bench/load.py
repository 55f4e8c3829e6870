"""Load benchmark (same as ``python -m redispool bench``); see redispool/loadtest.py.

python bench/load.py                      # 1000 threads x 20 GETs, 4 cases
python bench/load.py --gevent             # 1000 greenlets
python bench/load.py --maxclients 100     # what exhaustion does to each
"""

from __future__ import annotations

import sys

from redispool.loadtest import main

if __name__ == "__main__":
    sys.exit(main())
