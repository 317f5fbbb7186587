"""The device as the model sees it: every number the model uses, in one frozen object."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class DeviceModel:
    """An H100 SXM (sm_90). Architectural numbers are the vendor's; the last block is fitted.

    Not measured here: the issue and MUFU rates are the architecture's per-SM throughputs, the
    clock is the boost clock, the bandwidth is a copy kernel's typical rate on HBM3.

    Fitted (``python -m perf.model --calibrate``, on measured H100 times of other projects'
    Triton kernels, ``perf/calibration/points.csv``): the fixed cost of a launch, the latency of
    one dependent round of memory accesses, and how much slower than the schedulers' peak a
    round's instructions issue. Each has the fitted value and the range that the leave-one-
    family-out fits and the constants fitting the data about as well span (``*_range``);
    ``variants()`` gives the device at each of those, so a prediction can be judged at its
    pessimistic end. The measured kernels are all well occupied, so the data barely constrain
    the round latency: a design that needs it small is not shown to be fast. Trust the form of
    the model more than these constants.

    The L2 rule: a re-read is a hit when the resident programs move (load and store) less than
    ``l2_reuse_bytes`` in between. The boundary is not sharp (replacement, other traffic,
    hashing): below ``l2_sure_hit_bytes`` it is a hit, above ``l2_sure_miss_bytes`` a miss, and
    in between the model judges both outcomes.
    """

    name: str = "H100 SXM (sm_90), modeled"
    sms: int = 132
    clock_hz: float = 1.98e9
    warp_instructions_per_sm_per_clock: int = 4  # four schedulers, one issue each per clock
    mufu_lanes_per_sm_per_clock: int = 16  # a warp's MUFU instruction takes 2 SM cycles of the SFU
    copy_bandwidth: float = 3.0e12  # bytes/s, read + write counted
    l2_bytes: int = 50 * 2**20  # "50 MB": 52,428,800 bytes, as the device reports its L2
    l2_reuse_bytes: int = 25 * 2**20  # the nominal boundary: half of the L2 holds what is re-read
    l2_sure_hit_bytes: int = 12 * 2**20
    l2_sure_miss_bytes: int = 50 * 2**20
    registers_per_sm: int = 65536
    register_allocation_unit: int = 256  # registers, per warp
    max_warps_per_sm: int = 64
    max_programs_per_sm: int = 32
    shared_bytes_per_sm: int = 228 * 1024
    shared_reserved_per_program: int = 1024

    # fitted: see the class docstring (perf/results/model/calibration.md)
    launch_s: float = 6.5e-6  # per kernel launch or torch op on the hot path
    round_latency_s: float = 20e-9  # one dependent round of memory accesses, beyond its bytes' time
    issue_factor: float = 0.0  # a round's instructions take this many times their peak issue time
    launch_s_range: tuple = (5.5e-6, 8.75e-6)
    round_latency_s_range: tuple = (0.0, 360e-9)
    issue_factor_range: tuple = (0.0, 0.55)
    # (name, launch_s, round_latency_s, issue_factor): each leave-one-family-out fit, and the
    # constants the data cannot tell apart from the fit at the largest value of each
    leave_one_out_fits: tuple = (
        ("without layer_norm", 6.25e-6, 0.0, 0.0),
        ("without megatron_cross_entropy", 6.5e-6, 20e-9, 0.0),
        ("without megatron_rms_norm", 6.5e-6, 0.0, 0.15),
        ("without relu_squared", 8.75e-6, 0.0, 0.0),
    )
    plausible_fits: tuple = (
        ("largest launch cost", 8.0e-6, 0.0, 0.0),
        ("largest round latency", 5.5e-6, 360e-9, 0.0),
        ("largest issue factor", 5.75e-6, 0.0, 0.55),
    )

    def programs_per_sm(self, registers, num_warps, shared_bytes):
        """Resident programs (CTAs) per SM: the tightest of warps, registers and shared memory."""
        per_warp = -(-max(registers, 1) * 32 // self.register_allocation_unit) * self.register_allocation_unit
        by_registers = (self.registers_per_sm // per_warp) // num_warps
        by_warps = self.max_warps_per_sm // num_warps
        by_shared = self.shared_bytes_per_sm // (shared_bytes + self.shared_reserved_per_program)
        return max(0, min(self.max_programs_per_sm, by_registers, by_warps, by_shared))

    def with_fit(self, launch_s, round_latency_s, issue_factor):
        return dataclasses.replace(self, launch_s=launch_s, round_latency_s=round_latency_s, issue_factor=issue_factor)

    def variants(self):
        """The device at its fitted constants, at each leave-one-family-out fit and at each
        plausible extreme: the pessimistic end of a prediction is the worst of these."""
        return [self] + [self.with_fit(*fit[1:]) for fit in self.leave_one_out_fits + self.plausible_fits]


DEVICE = DeviceModel()
