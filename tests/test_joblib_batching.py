"""The joblib backend's batch sizes (pure: no workers; joblib calls these as it dispatches)."""

import functools
from types import SimpleNamespace

from celerynb._joblib import FAST_RAMP, LEARNED_FUNCTIONS, CelerynbBackend


def tiny(i):
    return i


def fit(i):
    return i


def a_backend() -> CelerynbBackend:
    backend = CelerynbBackend()
    backend.parallel = SimpleNamespace(verbose=0)  # what joblib's configure() sets
    return backend


def a_call(backend: CelerynbBackend, function, sizes_back: list[tuple[int, float]]) -> list[int]:
    """One Parallel call as joblib drives it: the batch sizes asked for before the first
    batch is sent and after each batch that comes back (size, seconds it took)."""
    backend.begin_batching()
    asked = [backend.compute_batch_size()]
    backend.batching_for(function)  # the first batch is sent
    for size, seconds in sizes_back:
        backend.batch_completed(size, seconds)
        asked.append(backend.compute_batch_size())
    backend.end_batching()
    return asked


def test_a_first_call_ramps_up_fast_while_batches_are_far_too_short():
    backend = a_backend()
    assert a_call(backend, tiny, [(1, 0.001), (FAST_RAMP, 0.001)]) == [1, FAST_RAMP, FAST_RAMP**2]


def test_a_later_call_of_the_same_function_starts_one_per_batch_then_resumes_its_size():
    backend = a_backend()
    backend._effective_batch_size = 4096
    backend.batching_for(tiny)
    backend.end_batching()  # an earlier call of tiny ended at 4096
    backend.begin_batching()
    # joblib's pre-dispatch: 2 x n_jobs calls, one per batch (two per worker in flight)
    assert [backend.compute_batch_size() for _ in range(4)] == [1, 1, 1, 1]
    backend.batching_for(tiny)
    backend.batch_completed(1, 0.02)
    assert backend.compute_batch_size() == 4096  # no ramp from 1 again
    backend.batch_completed(4096, 0.7)  # within joblib's ideal duration: kept
    assert backend.compute_batch_size() == 4096


def test_a_size_learned_on_one_function_is_not_applied_to_another():
    backend = a_backend()
    a_call(backend, tiny, [(1, 0.001), (8, 0.001), (64, 0.001)])  # tiny ends at 512
    assert a_call(backend, fit, [(1, 0.6), (1, 0.6)]) == [1, 1, 1]  # fits take long enough
    assert a_call(backend, tiny, [(1, 0.01)]) == [1, 512]


def test_a_resumed_size_that_proves_too_big_shrinks_as_joblib_would():
    backend = a_backend()
    a_call(backend, fit, [(1, 0.001), (8, 0.001)])  # ends at 64
    asked = a_call(backend, fit, [(1, 0.02), (64, 10.0)])  # now each call takes long
    assert asked[:2] == [1, 64] and asked[2] < 64


def test_batch_sizes_are_remembered_for_a_bounded_number_of_functions():
    backend = a_backend()
    for n in range(LEARNED_FUNCTIONS + 10):
        backend.begin_batching()
        backend.batching_for(SimpleNamespace(__module__="m", __qualname__=f"f{n}"))
        backend.end_batching()
    assert len(backend._learned) == LEARNED_FUNCTIONS


def test_a_learned_size_is_not_resumed_when_the_calls_now_take_long():
    """The same function on bigger data: batches of one already take joblib's ideal."""
    backend = a_backend()
    a_call(backend, fit, [(1, 0.001), (8, 0.001)])  # ends at 64
    assert a_call(backend, fit, [(1, 5.0), (1, 5.0)]) == [1, 1, 1]


def test_functions_of_the_same_name_learn_apart():
    backend = a_backend()
    first = lambda i: i  # noqa: E731 (both named "<lambda>", in this module)
    second = lambda i: -i  # noqa: E731
    a_call(backend, first, [(1, 0.001), (8, 0.001)])
    assert a_call(backend, second, [(1, 0.01)]) == [1, FAST_RAMP]  # a ramp, not first's 64
    assert a_call(backend, functools.partial(first), [(1, 0.01)]) == [1, 64]


def test_a_call_sending_everything_at_once_resumes_after_its_single_calls():
    """pre_dispatch="all": joblib sizes every batch before any comes back."""
    backend = a_backend()
    a_call(backend, tiny, [(1, 0.001), (8, 0.001)])  # ends at 64
    backend.begin_batching()
    asked = [backend.compute_batch_size()]
    backend.batching_for(tiny)
    asked += [backend.compute_batch_size() for _ in range(5)]
    assert asked == [1, 1, 1, 1, 64, 64]  # 2 x n_jobs (2 processes) single calls first
