"""Buffers a launch needs that outlive it: the ticket counter of ``kernels/reduce.py``.

One int32 counter per device and stream, made once (zeroed when made) and put back to 0 by the
last program of every launch that uses it, so a launch allocates and fills nothing. Launches on
one stream run one after another, so they can share it; another stream gets its own.
"""

import torch

_tickets = {}


def _stream_key(device):
    if device.type == "cuda":
        return (str(device), torch.cuda.current_stream(device).stream_id)
    return (str(device), 0)


def ticket_counter(device):
    """``(1,)`` int32 on ``device``, 0 between launches."""
    key = _stream_key(device)
    counter = _tickets.get(key)
    if counter is None:
        counter = _tickets[key] = torch.zeros(1, dtype=torch.int32, device=device)
    return counter


def partials(num_programs, width, dtype, device):
    """Room for each program's partial sums (uninitialized: every program writes its own)."""
    return torch.empty(num_programs * width, dtype=dtype, device=device)
