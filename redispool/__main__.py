"""``python -m redispool demo [--load]``: the demo API on an embedded Redis."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(
            "usage: python -m redispool demo [--host H] [--port P] [--workers N]\n"
            "                                [--worker-class sync|gthread|gevent]\n"
            "                                [--per-request] [--no-gunicorn] [--load]\n"
            "       python -m redispool bench [--workers N] [--ops M] [--gevent] [--maxclients K]\n"
            "       python -m redispool budget (--maxclients K | --url URL)"
            " --workers-per-host W [--hosts H] [--reserve R]"
        )
        return 0 if args else 2
    if args[0] == "demo":
        from .demo.run import main as demo_main

        return demo_main(args[1:])
    if args[0] == "bench":
        from .loadtest import main as bench_main

        return bench_main(args[1:])
    if args[0] == "budget":
        from .sizing import main as budget_main

        return budget_main(args[1:])
    print(f"unknown command {args[0]!r}; try: python -m redispool demo", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
