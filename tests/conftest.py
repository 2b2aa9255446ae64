"""Suite-wide settings."""

import os

# One thread per process: on a 2-core machine the tiny models of the tests run many times faster on one
# thread than on two that wait on each other (and on the other processes the tests start).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
