"""The joblib backend's batch sizes (pure: no workers; joblib calls these as it dispatches)."""

from types import SimpleNamespace

from celerynb._joblib import FAST_RAMP, CelerynbBackend


def a_backend_that_learned(size: int) -> CelerynbBackend:
    backend = CelerynbBackend()
    backend.parallel = SimpleNamespace(verbose=0)  # what joblib's configure() sets
    backend._effective_batch_size = size  # what an earlier Parallel call ended with
    return backend


def test_a_first_call_ramps_up_fast_while_batches_are_far_too_short():
    backend = a_backend_that_learned(1)
    backend.begin_batching()
    assert backend.compute_batch_size() == 1
    backend.batch_completed(1, 0.001)  # far under MIN_IDEAL_BATCH_DURATION / FAST_RAMP
    assert backend.compute_batch_size() == FAST_RAMP
    backend.batch_completed(FAST_RAMP, 0.001)
    assert backend.compute_batch_size() == FAST_RAMP**2


def test_a_new_call_sends_single_calls_until_a_batch_is_back_then_the_learned_size():
    backend = a_backend_that_learned(4096)
    backend.begin_batching()
    # joblib's pre-dispatch: 2 x n_jobs calls, one per batch (two per worker in flight)
    assert [backend.compute_batch_size() for _ in range(4)] == [1, 1, 1, 1]
    backend.batch_completed(1, 0.02)
    assert backend.compute_batch_size() == 4096  # no ramp from 1 again
    backend.batch_completed(4096, 0.5)  # within joblib's ideal duration: kept
    assert backend.compute_batch_size() == 4096


def test_the_learned_size_survives_a_call_that_ended_before_any_batch_came_back():
    backend = a_backend_that_learned(512)
    backend.begin_batching()
    assert backend.compute_batch_size() == 1  # e.g. a call of two items: all sent
    backend.begin_batching()  # the next call
    backend.batch_completed(1, 0.02)
    assert backend.compute_batch_size() == 512


def test_a_learned_size_that_proves_too_big_shrinks_as_joblib_would():
    backend = a_backend_that_learned(1000)
    backend.begin_batching()
    backend.batch_completed(1, 0.02)
    assert backend.compute_batch_size() == 1000
    backend.batch_completed(1000, 10.0)  # far over MAX_IDEAL_BATCH_DURATION
    assert backend.compute_batch_size() < 1000
