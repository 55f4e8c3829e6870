"""The signal storm (see tests/test_signals.py) on Sentinel-managed pools: a
handler raising at any call or loop of the Sentinel code, the pools' and
redis-py's, while blocks write and read back values of their own, connections
are killed (and found again through Sentinel), the listener is stopped (and
started again), the service is moved (a simulated demotion), and with one seed
a real failover. Each run is a subprocess (``_signal_storm_sentinel.py``) on a
fresh Sentinel setup. Timing decides where each signal lands, so this is a net
for regressions: the windows it found are each pinned by
test_sentinel_windows.py."""

from __future__ import annotations

import pytest

from ..test_signals import STORM_MARKS, _child

pytestmark = STORM_MARKS


@pytest.mark.parametrize(("seed", "failover"), [(1, False), (2, False), (3, True)])
def test_a_signal_raising_in_sentinel_pools_loses_nothing_and_follows_the_primary(
    sentinel_setup, seed: int, failover: bool
) -> None:
    setup = sentinel_setup
    spec = ",".join(f"{h}:{p}" for h, p in setup.addresses)
    out = _child(
        "_signal_storm_sentinel", spec, setup.service, seed, *(["failover"] if failover else [])
    )
    # it did land all over, the Sentinel code included
    assert out["raised"] >= 100 and len(out["where"]) >= 10, out
    sentinel = out["sentinel_where"]
    assert sum(sentinel.values()) >= 20 and len(sentinel) >= 5, out
    assert out["lock_free"] and out["other_done"], out  # no deadlock, no lost wake-up
    assert out["wrong"] == [], out  # no reply read by another block
    assert out["stale_after_move"] == [], out  # a move cut short still drains
    for s in out["stats"].values():
        assert s == {**s, "in_use": 0, "creating": 0, "closing": 0, "waiting": 0}, out
        assert s["size"] == s["idle"], out
    # every idle connection alive (or killed), fresh, of the current generation,
    # where its ROLE says; the pools lend their max_size
    assert out["idle_problems"] == [], out
    assert out["lends"] == {"w": 3, "r": 2} and "lent_stale" not in out, out
    for k, n in out["server_connections"].items():  # no socket left behind
        assert n <= out["sizes"][k], out
    # the service names the primary the sentinels name, one listener each, its
    # sentinel connections clean and none left open; all gone on close
    service = out["service"]
    assert service["address"] == service["primary"] and service["settled"], out
    assert out["listeners"] == {"w": 1, "r": 1} and out["listener_alive"], out
    assert out["sentinel_side"] == [] and out["listeners_stopped"], out
    if failover:  # a real one, followed during the storm
        assert out["switched"], out
        assert out["followed_at"] is not None and out["followed_at"] < out["seconds"], out
