"""`vigil up`'s restart policy: backoff doubling to a cap, giving up only on a process that
keeps failing at start, and starting over once a process has been healthy for a while."""

from __future__ import annotations

from interfaces.cli.supervise import RestartPolicy, describe_exit

NEVER_READY = None


def policy() -> RestartPolicy:
    return RestartPolicy(
        backoff_s_min=1.0, backoff_s_max=30.0, healthy_after_s=60.0, start_failures_max=5
    )


def test_a_crash_after_readiness_is_restarted_with_a_doubling_capped_backoff() -> None:
    restarts = policy()
    delays_s = [restarts.exited(ready_for_s=5.0) for _ in range(8)]
    assert delays_s == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert restarts.start_failures == 0, "crashes after readiness never make it give up"


def test_a_process_that_keeps_failing_at_start_is_given_up_on_the_fifth_failure() -> None:
    restarts = policy()
    delays_s = [restarts.exited(NEVER_READY) for _ in range(4)]
    assert delays_s == [1.0, 2.0, 4.0, 8.0]
    assert restarts.exited(NEVER_READY) is None


def test_a_crash_after_readiness_between_failed_starts_does_not_reset_the_count() -> None:
    restarts = policy()
    for _ in range(3):
        assert restarts.exited(NEVER_READY) is not None
    assert restarts.exited(ready_for_s=10.0) is not None, "ready, but not for long"
    assert restarts.exited(NEVER_READY) is not None
    assert restarts.exited(NEVER_READY) is None


def test_a_healthy_minute_starts_the_backoff_and_the_count_afresh() -> None:
    restarts = policy()
    for _ in range(4):
        restarts.exited(NEVER_READY)
    assert restarts.exited(ready_for_s=60.0) == 1.0
    assert restarts.start_failures == 0
    for _ in range(4):
        assert restarts.exited(NEVER_READY) is not None
    assert restarts.exited(NEVER_READY) is None


def test_exits_are_described_by_code_or_by_signal() -> None:
    assert describe_exit(1) == "exited with code 1"
    assert describe_exit(0) == "exited with code 0"
    assert describe_exit(-9) == "was killed by SIGKILL"
    assert describe_exit(-15) == "was killed by SIGTERM"
