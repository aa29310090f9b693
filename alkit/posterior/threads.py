"""One BLAS / torch thread for the small fitting loops of the posteriors."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def one_thread():
    """Run small training loops with one BLAS / torch thread: hundreds of small matmuls, where
    multi-threaded BLAS on a loaded 2-core machine spins far slower (measured in the Laplace
    head: 200 labels took 134 s instead of 2 s; a BayesVLM refit 73 s instead of 0.4 s)."""
    import torch
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(previous)
