"""The hardware model of LASNet's latency predictor and its device profiles.

Han et al., "Latency-aware Spatial-wise Dynamic Networks", NeurIPS 2022, Sec. 3.3,
Fig. 3 and Appendix A: a device is a set of processing engines (PEs) with FP32 units,
an off-chip memory (DRAM), an on-chip global buffer (L2) shared by the PEs and a local
memory per PE. Table 4 lists the PEs, FP32 units per PE, frequency and DRAM bandwidth
of the paper's devices. The remaining parameters (L2 bandwidth ratio, launch cost,
access quantum, FP32 cycles) are those of the authors' simulator (LeapLabTHU/LAUDNet,
``DyNetSimulator``, commit b53b980). Data are float32 throughout; memory capacities
are not part of the model (neither the paper nor the simulator has them).
"""
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

from .engine import EngineModel
from .machine import is_machine_name, machine_profile_path, write_atomically

PROFILE_DIR = Path(__file__).parent / 'profiles'
FP32_BYTES = 4
LATENCY_MODES = ('add', 'max')


@dataclass(frozen=True)
class Hardware:
    """A device as the latency predictor sees it (hashable: predictions are cached per
    device and shape).

    Args:
        name (str): profile name, e.g. ``'v100'``.
        num_pes (int): processing engines (GPU: streaming multiprocessors).
        fp32_units (float): FP32 units per PE.
        frequency (float): clock, Hz.
        dram_bandwidth (float): off-chip bandwidth, bytes/s.
        l2_ratio (float): on-chip (L2) bandwidth as a multiple of ``dram_bandwidth``.
            Default: 4.0.
        launch_time (float): fixed cost per operator (kernel launch), s. Default: 8e-6.
        access_quantum (int): fp32 elements fetched by one contiguous memory request
            (a 32-byte sector); strided reads shorter than this waste bandwidth.
            Default: 8.
        fp32_cycles (int): the PE's work is quantised to ``fp32_units * fp32_cycles``
            elements (a tile smaller than that leaves units idle). Default: 4.
        batch_size (int): images per inference. Default: 1 (the paper's setting).
        latency_mode (str): how an operator's compute and data-movement latencies
            combine: ``'add'`` (Appendix A) or ``'max'`` (full overlap). Default: 'add'.
        notes (str): where the values come from. Default: ''.
        engine (EngineModel, optional): a CPU profile's fitted cost model of mmdyn's
            LAS executor (:mod:`.engine`); when given, blocks are predicted with it
            instead of the tiled GPU model. Default: None.
        kernels (tuple[tuple[str, str], ...]): a CPU profile's kernel choices measured
            during the calibration, ``(entry, candidate)`` as in mmdyn's kernel-choice
            file (``'gemm:cpu:float32x1024x64x256'``, ``'conv1x1_packed'``); with
            ``MMDYN_LATENCY_PROFILE`` a shape class not measured yet takes the choice of
            the nearest of them (:mod:`mmdyn.ops.kernel_choice`). Default: ().
    """

    name: str
    num_pes: int
    fp32_units: float
    frequency: float
    dram_bandwidth: float
    l2_ratio: float = 4.0
    launch_time: float = 8e-6
    access_quantum: int = 8
    fp32_cycles: int = 4
    batch_size: int = 1
    latency_mode: str = 'add'
    notes: str = ''
    engine: Optional[EngineModel] = None
    kernels: Tuple[Tuple[str, str], ...] = ()

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f'Hardware.name must be a non-empty string, got {self.name!r}')
        for field in ('num_pes', 'access_quantum', 'fp32_cycles', 'batch_size'):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'Hardware.{field} must be a positive int, got {value!r}')
        for field in ('fp32_units', 'frequency', 'dram_bandwidth', 'l2_ratio'):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value <= 0:
                raise ValueError(f'Hardware.{field} must be a positive finite number, '
                                 f'got {value!r}')
        if isinstance(self.launch_time, bool) or not isinstance(self.launch_time, (int, float)) \
                or not math.isfinite(self.launch_time) or self.launch_time < 0:
            raise ValueError(f'Hardware.launch_time must be a finite number >= 0, '
                             f'got {self.launch_time!r}')
        if self.engine is not None and not isinstance(self.engine, EngineModel):
            raise ValueError(f'Hardware.engine must be an EngineModel or None, '
                             f'got {type(self.engine).__name__}')
        if not isinstance(self.kernels, tuple) or not all(
                isinstance(item, tuple) and len(item) == 2
                and all(isinstance(v, str) and v for v in item) for item in self.kernels):
            raise ValueError('Hardware.kernels must be (entry, candidate) pairs of '
                             f'non-empty strings, got {self.kernels!r}')
        if self.latency_mode not in LATENCY_MODES:
            raise ValueError(f'Hardware.latency_mode must be one of {LATENCY_MODES}, '
                             f'got {self.latency_mode!r}')

    # Derived rates, in fp32 elements per second.
    @property
    def dram_rate(self) -> float:
        return self.dram_bandwidth / FP32_BYTES

    @property
    def l2_rate(self) -> float:
        return self.dram_rate * self.l2_ratio

    @property
    def pe_quantum(self) -> float:
        """Elements a PE processes in one step: tiles are padded up to a multiple."""
        return self.fp32_units * self.fp32_cycles

    @property
    def peak_macs(self) -> float:
        """Peak multiply-accumulates per second of the whole device."""
        return self.num_pes * self.fp32_units * self.frequency

    def combine(self, compute: float, memory: float) -> float:
        """One operator's latency without its launch cost (Appendix A: the sum)."""
        return compute + memory if self.latency_mode == 'add' else max(compute, memory)


def available_profiles() -> Tuple[str, ...]:
    """Names of the profiles shipped in ``mmdyn/latency/profiles``."""
    return tuple(sorted(p.stem for p in PROFILE_DIR.glob('*.json')))


def hardware_from_dict(data: dict) -> Hardware:
    names = {f.name for f in dataclasses.fields(Hardware)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f'unknown Hardware fields {unknown}; expected a subset of '
                         f'{sorted(names)}')
    missing = sorted(f.name for f in dataclasses.fields(Hardware)
                     if f.default is dataclasses.MISSING and f.name not in data)
    if missing:
        raise ValueError(f'hardware profile lacks the field(s) {missing}')
    engine = data.get('engine')
    if engine is not None:
        if not isinstance(engine, dict) or set(engine) != {'coefficients', 'llc_bytes'} \
                or not isinstance(engine['coefficients'], dict):
            raise ValueError("Hardware.engine must be a mapping with 'coefficients' (a "
                             "mapping of name to seconds) and 'llc_bytes'")
        data = dict(data, engine=EngineModel.from_mapping(engine['coefficients'],
                                                          engine['llc_bytes']))
    if 'kernels' in data:
        kernels = data['kernels']
        if not isinstance(kernels, dict):
            raise ValueError('Hardware.kernels must be a mapping of kernel-choice entry to '
                             f'candidate name, got {type(kernels).__name__}')
        data = dict(data, kernels=tuple(sorted(kernels.items())))
    return Hardware(**data)


def load_profile(name_or_path: Union[str, Path]) -> Hardware:
    """A shipped profile by name (``'v100'``, see :func:`available_profiles`), this
    machine's calibrated CPU profile (``'cpu'``: current thread count, ``'cpu-t4'``: 4
    threads; see :mod:`mmdyn.latency.machine`) or a JSON file written by
    :func:`save_profile`."""
    path = Path(name_or_path)
    if path.suffix != '.json' and is_machine_name(str(name_or_path)):
        path = machine_profile_path(str(name_or_path))
    elif path.suffix != '.json':
        path = PROFILE_DIR / f'{name_or_path}.json'
        if not path.is_file():
            raise ValueError(f'unknown hardware profile {str(name_or_path)!r}; available: '
                             f'{", ".join(available_profiles())}, cpu (calibrated on '
                             'this machine), or a .json path')
    elif not path.is_file():
        raise ValueError(f'hardware profile file {str(path)!r} does not exist')
    return hardware_from_dict(json.loads(path.read_text()))


def hardware_to_dict(hw: Hardware) -> dict:
    """``hw`` as plain JSON data (the inverse of :func:`hardware_from_dict`)."""
    data = dataclasses.asdict(hw)
    if hw.engine is not None:
        data['engine'] = hw.engine.as_dict()
    data['kernels'] = dict(hw.kernels)
    return data


def save_profile(hw: Hardware, path: Union[str, Path]) -> Path:
    """Write ``hw`` as JSON (readable by :func:`load_profile`); returns the path."""
    return write_atomically(path, json.dumps(hardware_to_dict(hw), indent=2) + '\n')
