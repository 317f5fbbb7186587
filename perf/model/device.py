"""The device as the model sees it: every number the model uses, in one frozen object."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class DeviceModel:
    """An H100 SXM (sm_90). Architectural numbers are the vendor's; the last block is fitted.

    Not measured here: the issue and MUFU rates are the architecture's per-SM throughputs, the
    clock is the boost clock, the bandwidth is a copy kernel's typical rate on HBM3.

    Fitted (``python -m perf.model --calibrate``, ``perf/calibration/points.csv``: measured H100
    times of Liger-Kernel's Triton kernels and H200 device times of our own): the fixed cost of
    a launch, the latency of one dependent round of memory accesses, and how much slower than
    the schedulers' peak a round's instructions issue. Each has the fitted value and the range
    that the leave-one-family-out fits and the constants fitting the data about as well span
    (``*_range``); ``variants()`` gives the device at each of those, so a prediction can be
    judged at its pessimistic end. Liger's points alone put the round latency and the issue
    factor near zero (its kernels are well occupied and stream); our H200 points, with many
    dependent rounds per program and more instructions per byte, need both. Trust the form of
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
    launch_s: float = 5.5e-6  # per kernel launch or torch op on the hot path
    round_latency_s: float = 220e-9  # one dependent round of memory accesses, beyond its bytes' time
    issue_factor: float = 0.40  # a round's instructions take this many times their peak issue time
    launch_s_range: tuple = (5.0e-6, 7.5e-6)
    round_latency_s_range: tuple = (60e-9, 420e-9)
    issue_factor_range: tuple = (0.10, 0.85)
    # (name, launch_s, round_latency_s, issue_factor): each leave-one-family-out fit, and the
    # constants the data cannot tell apart from the fit at the largest value of each
    leave_one_out_fits: tuple = (
        ("without layer_norm", 5.0e-6, 220e-9, 0.40),
        ("without megatron_cross_entropy", 5.5e-6, 220e-9, 0.45),
        ("without megatron_rms_norm", 5.5e-6, 200e-9, 0.45),
        ("without relu_squared", 5.25e-6, 220e-9, 0.40),
        ("without triton_focal distribution", 5.5e-6, 220e-9, 0.40),
        ("without triton_focal sigmoid", 5.75e-6, 180e-9, 0.15),
        ("without triton_focal softmax", 5.25e-6, 240e-9, 0.45),
        ("without triton_focal softmax one-read", 5.5e-6, 200e-9, 0.45),
        ("without triton_focal target count", 5.25e-6, 240e-9, 0.40),
    )
    plausible_fits: tuple = (
        ("largest launch cost", 7.5e-6, 200e-9, 0.40),
        ("largest round latency", 5.25e-6, 420e-9, 0.10),
        ("largest issue factor", 5.25e-6, 60e-9, 0.85),
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

# The H200 is the H100's GH100 chip (132 SMs, the same clocks and L2) with HBM3e: only the
# bandwidth differs. 4.22 TB/s is a copy kernel's rate measured on one
# (perf/results/nvidia-h200/measured.json, ``copy_bandwidth_gbs``). The fitted constants are
# shared: the calibration fits H100 wall times and H200 device times together.
H200 = dataclasses.replace(DEVICE, name="H200 SXM (sm_90), modeled", copy_bandwidth=4.22e12)

MEASURED_DEVICES = {"NVIDIA H100 80GB HBM3": DEVICE, "NVIDIA H200": H200}


def for_measured_device(name):
    """The model of the GPU a measured point names (its ``torch.cuda.get_device_name()``)."""
    if name not in MEASURED_DEVICES:
        raise KeyError(f"no device model for {name!r}; known: {sorted(MEASURED_DEVICES)}")
    return MEASURED_DEVICES[name]


def model_for(name):
    """The device model of a GPU by its name, the H100's where none is known: then a measured /
    modeled ratio mixes the model's error with the difference of the devices."""
    return MEASURED_DEVICES.get(name, DEVICE)
