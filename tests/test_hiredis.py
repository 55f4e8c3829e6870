"""With hiredis installed: its packer crashes the process (a segmentation fault)
when a signal handler raises while it packs a number; the pool's connections
must raise instead (``redispool/_packer.py``). The suite's processes hide
hiredis (tests/__init__.py): this test's child runs on it, as does one seed of
test_signals.py's Redis storm."""

from __future__ import annotations

from .test_signals import HIREDIS, _child

pytestmark = HIREDIS


def test_a_raising_signal_handler_in_hiredis_packing_raises_instead_of_crashing(
    redis_url: str,
) -> None:
    out = _child("_hiredis_child", redis_url, timeout=60, hiredis=True)  # a crash fails here
    assert out["parser"] == "_HiredisParser", out  # hiredis in use
    assert out["wrong"] == [], out  # the same bytes as hiredis's packer
    assert out["huge"] == "ValueError", out  # an int of 5,000 digits: an error, no crash
    assert out["raised"] >= 20 and out["packed"] >= 10_000 and out["sent"] >= 100, out
    assert out["after"] == "12345", out  # and the pool still works
