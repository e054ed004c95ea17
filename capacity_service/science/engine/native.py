"""Fused CPU kernels for the stacked recurrent and CNN steps, compiled from C at first use.

On a CPU an LSTM step's elementwise work (the gate activations, the cell, and their
backward) is about ten passes over memory in torch ops, and this build's `torch.tanh`
runs scalar; `recurrent_kernels.c` does the LSTM's in one vectorized, OpenMP-parallel
pass (the GRU's likewise), and the tanh RNN's activation with the same vectorized tanh.
`recurrent_rows.c` goes further where torch's BLAS `sgemm_` is found (MKL, on x86
builds): a recurrent stack's whole gradient and accuracy pass, one row (trial) at a time
with every activation in that core's L2 cache, the products by that sgemm (the torch-op
step moves each step's gates of all rows through L3 between a dozen calls).
`cnn_kernels.c` takes a stacked CNN's whole gradient and its accuracy pass, one sample at
a time through direct convolutions (oneDNN's grouped convolutions of a few channels run at
a fraction of this CPU's speed). The sources are compiled with the machine's C compiler
into a cache directory keyed by the sources, the flags and the CPU's features, so workers
on one machine share one build and a machine with another CPU gets its own. Where no
compiler is found or the build fails, or `CAPACITY_NATIVE_KERNELS=0`, `kernels()` is None
and the engine runs the same steps in torch ops (a warning says why, once).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import math
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from capacity_service.science.models import parameter_shapes, pool_after
from capacity_service.specs import CNNSpec, RNNSpec

log = logging.getLogger(__name__)

SOURCES = tuple(Path(__file__).with_name(name) for name in (
    "recurrent_kernels.c", "blas.c", "recurrent_rows.c", "cnn_kernels.c"))  # fmt: skip
HEADERS = tuple(Path(__file__).with_name(name)  # part of the build's key
                for name in ("recurrent_cells.h", "blas.h", "row_parts.h"))  # fmt: skip
# -fno-trapping-math lets gcc turn the clamps into vector selects (without it the loops
# stay scalar); -ffp-contract=fast: a * b + c as one FMA (ISO C mode keeps them apart);
# -march=native: the build is keyed by this CPU's features
FLAGS = ["-O3", "-march=native", "-fno-trapping-math", "-ffp-contract=fast", "-fopenmp",
         "-std=c11", "-shared", "-fPIC"]  # fmt: skip
KINDS = ("lstm", "gru", "rnn", "cnn")  # the kinds whose CPU steps use them
_ENABLED = "CAPACITY_NATIVE_KERNELS"  # "0" runs the torch-op step instead
_CACHE = "CAPACITY_KERNEL_CACHE"  # where builds are kept (default ~/.cache/capacity_service)

_float_p, _long = ctypes.c_void_p, ctypes.c_long


class Kernels:
    """The entry points of the C sources on contiguous float32 CPU tensors; the layout
    and meaning of each argument are the C source's."""

    def __init__(self, library: ctypes.CDLL) -> None:
        pointers, size, flag = _float_p, _long, ctypes.c_int
        self._lstm_forward = _bind(library.lstm_forward, [pointers] * 5 + [size, size])
        self._lstm_backward = _bind(library.lstm_backward,
                                    [pointers] * 5 + [flag, pointers, size, size])  # fmt: skip
        self._gru_forward = _bind(library.gru_forward, [pointers] * 7 + [size] * 3)
        self._gru_backward = _bind(library.gru_backward, [pointers] * 8 + [size, size])
        self._tanh = _bind(library.tanh_inplace, [pointers, size])
        net = [ctypes.c_int] * 6  # layers, kernel, channels, side, hidden, pools
        self._cnn_gradient = _bind(library.cnn_gradient, [pointers] * 6 + [size, size] + net,
                                   ctypes.c_int)  # fmt: skip
        self._cnn_logits = _bind(library.cnn_logits, [pointers, pointers, size, pointers,
                                                      size, size, *net], ctypes.c_int)  # fmt: skip
        cell = [ctypes.c_int, size, size, size]  # kind, hidden, n_in, steps
        self._recurrent_gradient = _bind(library.recurrent_gradient,
                                         [pointers] * 6 + [size, size, *cell],
                                         ctypes.c_int)  # fmt: skip
        self._recurrent_logits = _bind(library.recurrent_logits, [pointers, pointers, size,
                                       pointers, size, size, *cell], ctypes.c_int)  # fmt: skip
        # the per-row recurrent step calls the BLAS that torch links; without one found,
        # the recurrent kinds run the per-step kernels above
        library.set_sgemm.argtypes, library.set_sgemm.restype = [ctypes.c_void_p], ctypes.c_int
        sgemm = _blas_sgemm()
        self.has_blas = sgemm is not None and bool(library.set_sgemm(sgemm))
        if sgemm is not None and not self.has_blas:
            log.warning("torch's BLAS sgemm_ failed a check product: the recurrent kinds "
                        "run their steps step by step")  # fmt: skip

    def lstm_forward(
        self,
        gates: torch.Tensor,
        c_prev: torch.Tensor | None,
        c: torch.Tensor,
        tanh_c: torch.Tensor,
        h: torch.Tensor,
    ) -> None:
        """gates (R, 4 H, B), activated in place; c_prev (R, H, B) or None (the zero
        state); fills c, tanh(c) and h (R, H, B)."""
        rows, hidden, batch = _shape(gates, 4, c, tanh_c, h, c_prev)
        self._lstm_forward(_address(gates), _address(c_prev), _address(c), _address(tanh_c),
                           _address(h), rows, hidden * batch, _threads())  # fmt: skip

    def lstm_backward(
        self,
        gates: torch.Tensor,
        tanh_c: torch.Tensor,
        c_prev: torch.Tensor | None,
        d_h: torch.Tensor,
        d_c: torch.Tensor,
        carry: bool,
        d_gates: torch.Tensor,
    ) -> None:
        """One step back from d_h: fills d_gates (R, 4 H, B); d_c holds d c_t from the
        step after (where `carry`) and receives d c_(t-1)."""
        rows, hidden, batch = _shape(gates, 4, tanh_c, d_h, d_c, c_prev)
        _same_shape(gates, d_gates)
        self._lstm_backward(_address(gates), _address(tanh_c), _address(c_prev),
                            _address(d_h), _address(d_c), int(carry), _address(d_gates),
                            rows, hidden * batch, _threads())  # fmt: skip

    def gru_forward(
        self,
        gates: torch.Tensor,
        recurrent: torch.Tensor | None,
        bias_hn: torch.Tensor,
        h_prev: torch.Tensor | None,
        n: torch.Tensor,
        h_n: torch.Tensor,
        h: torch.Tensor,
    ) -> None:
        """gates (R, 3 H, B): r and z activated in place; recurrent (R, 3 H, B), W_hh
        h_prev, and h_prev (R, H, B) both None for the zero state; bias_hn (R, H); fills
        n, h_n and h (R, H, B)."""
        rows, hidden, batch = _shape(gates, 3, h_prev, n, h_n, h)
        if (recurrent is None) != (h_prev is None):
            raise ValueError("the recurrent term and h_prev come together")
        if recurrent is not None:
            _same_shape(gates, recurrent)
        _check(bias_hn)
        if tuple(bias_hn.shape) != (rows, hidden):
            raise ValueError(f"b_hn of shape {tuple(bias_hn.shape)}, not {(rows, hidden)}")
        self._gru_forward(_address(gates), _address(recurrent), _address(bias_hn),
                          _address(h_prev), _address(n), _address(h_n), _address(h), rows,
                          hidden, batch, _threads())  # fmt: skip

    def gru_backward(
        self,
        gates: torch.Tensor,
        n: torch.Tensor,
        h_n: torch.Tensor,
        h_prev: torch.Tensor | None,
        d_h: torch.Tensor,
        d_gates: torch.Tensor,
        d_recurrent: torch.Tensor,
        d_h_direct: torch.Tensor,
    ) -> None:
        """One step back from d_h: fills d_gates and d_recurrent (R, 3 H, B) and
        d_h_direct (R, H, B), the part of d h_(t-1) outside the products (d_h z)."""
        rows, hidden, batch = _shape(gates, 3, n, h_n, h_prev, d_h, d_h_direct)
        _same_shape(gates, d_gates, d_recurrent)
        self._gru_backward(_address(gates), _address(n), _address(h_n), _address(h_prev),
                           _address(d_h), _address(d_gates), _address(d_recurrent),
                           _address(d_h_direct), rows, hidden * batch, _threads())  # fmt: skip

    def cnn_gradient(
        self,
        net: CNNShape,
        params: Sequence[torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        weight: torch.Tensor,
        loss: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The gradient (R, row parameters) of every row's weighted cross-entropy: x (R, B,
        S * S), y (R, B) int64 labels, weight (R, B); each row's part is laid out as its
        parameters in order (`CNNShape.split` makes the views). Where `loss` (R,) is
        given, it receives each row's weighted cross-entropy."""
        return self._gradient(self._cnn_gradient, net, params, x, y, weight, loss)

    def cnn_logits(
        self, net: CNNShape, params: Sequence[torch.Tensor], x: torch.Tensor
    ) -> torch.Tensor:
        """Logits (R, n, 2) of images x through every row: x (n, S * S), the same for
        every row, or (R, n, S * S)."""
        return self._logits(self._cnn_logits, net, params, x)

    def recurrent_gradient(
        self,
        net: RecurrentShape,
        params: Sequence[torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        weight: torch.Tensor,
        loss: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The gradient (R, row parameters) of every row's weighted cross-entropy, one
        row at a time (recurrent_rows.c): x (R, B, T, n_in), y (R, B) int64 labels,
        weight (R, B); each row's part is laid out as its parameters (`split`). Where
        `loss` (R,) is given, it receives each row's weighted cross-entropy."""
        self._need_blas()
        return self._gradient(self._recurrent_gradient, net, params, x, y, weight, loss)

    def recurrent_logits(
        self, net: RecurrentShape, params: Sequence[torch.Tensor], x: torch.Tensor
    ) -> torch.Tensor:
        """Logits (R, n, 2) of sequences x through every row: x (n, T, n_in), the same
        for every row, or (R, n, T, n_in)."""
        self._need_blas()
        return self._logits(self._recurrent_logits, net, params, x)

    def _gradient(
        self,
        function: Any,
        net: KernelShape,
        params: Sequence[torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        weight: torch.Tensor,
        loss: torch.Tensor | None,
    ) -> torch.Tensor:
        """A gradient kernel's call, after the checks C cannot make."""
        rows, batch = y.shape
        net.check(params, rows)
        _check(x)
        _check(weight)
        _check_labels(y)
        if loss is not None:
            _check(loss)
            if tuple(loss.shape) != (rows,):
                raise ValueError(f"a loss of shape {tuple(loss.shape)} for {rows} rows")
        if tuple(x.shape) != (rows, batch, *net.sample_shape) or weight.shape != y.shape:
            raise ValueError(f"{net.samples} {tuple(x.shape)} and weights "
                             f"{tuple(weight.shape)} for labels {tuple(y.shape)} and "
                             f"samples of shape {net.sample_shape}")  # fmt: skip
        grads = torch.empty(rows, net.row_params())
        done = function(_pointers(params), x.data_ptr(), y.data_ptr(), weight.data_ptr(),
                        grads.data_ptr(), _address(loss), rows, batch, *net.arguments(),
                        _threads())  # fmt: skip
        if not done:
            raise MemoryError(f"no memory for the {net.name} kernel's scratch")
        return grads

    def _logits(
        self, function: Any, net: KernelShape, params: Sequence[torch.Tensor], x: torch.Tensor
    ) -> torch.Tensor:
        """A logits kernel's call on samples shared by every row or each row's own."""
        rows = params[0].shape[0]
        net.check(params, rows)
        _check(x)
        sample = net.sample_shape
        shared = x.dim() == 1 + len(sample)
        if tuple(x.shape[1 + (not shared) :]) != sample or (not shared and x.shape[0] != rows):
            raise ValueError(f"{net.samples} of shape {tuple(x.shape)} for {rows} rows of "
                             f"samples of shape {sample}")  # fmt: skip
        n = x.shape[0 if shared else 1]
        logits = torch.empty(rows, n, 2)
        row_stride = 0 if shared else n * math.prod(sample)
        done = function(_pointers(params), x.data_ptr(), row_stride, logits.data_ptr(), rows,
                        n, *net.arguments(), _threads())  # fmt: skip
        if not done:
            raise MemoryError(f"no memory for the {net.name} kernel's scratch")
        return logits

    def _need_blas(self) -> None:
        if not self.has_blas:
            raise RuntimeError("the per-row recurrent kernels need torch's BLAS sgemm, "
                               "which this torch build does not export")  # fmt: skip

    def tanh_(self, x: torch.Tensor) -> torch.Tensor:
        """x = tanh(x) in place; x."""
        _check(x)
        self._tanh(x.data_ptr(), x.numel(), _threads())
        return x


def _bind(function: Any, argtypes: list[Any], restype: Any = None) -> Any:
    """A C function with its arguments' types and, last, its thread count."""
    function.argtypes = [*argtypes, ctypes.c_int]
    function.restype = restype
    return function


@dataclass(frozen=True)
class RowLayout:
    """One row's parameter shapes (models.parameter_shapes), against which a kernel's
    stacked parameters are checked and its flat gradient (R, row parameters) is split."""

    shapes: tuple[tuple[int, ...], ...]

    def row_params(self) -> int:
        return sum(math.prod(shape) for shape in self.shapes)

    def split(self, grads: torch.Tensor) -> list[torch.Tensor]:
        """(R, row parameters) -> one (R, *shape) view per parameter."""
        views, at = [], 0
        for shape in self.shapes:
            size = math.prod(shape)
            views.append(grads[:, at : at + size].view(grads.shape[0], *shape))
            at += size
        return views

    def check(self, params: Sequence[torch.Tensor], rows: int) -> None:
        """What C cannot check of the stacked parameters: their count and shapes."""
        if len(params) != len(self.shapes):
            raise ValueError(f"{len(params)} parameter tensors for a model of "
                             f"{len(self.shapes)}")  # fmt: skip
        for tensor, shape in zip(params, self.shapes, strict=True):
            _check(tensor)
            if tuple(tensor.shape) != (rows, *shape):
                raise ValueError(f"a parameter of shape {tuple(tensor.shape)}, not "
                                 f"{(rows, *shape)}")  # fmt: skip


def _shapes(spec: CNNSpec | RNNSpec) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(shape) for shape in parameter_shapes(spec))


@dataclass(frozen=True)
class CNNShape(RowLayout):
    """What the CNN kernel needs of a models.CNN: its spec's numbers and which
    convolutions a pool follows."""

    layers: int = 0
    kernel: int = 0
    channels: int = 0
    side: int = 0
    hidden: int = 0
    pools: frozenset[int] = frozenset()

    @classmethod
    def of(cls, spec: CNNSpec) -> CNNShape:
        return cls(_shapes(spec), spec.conv_layers, spec.kernel, spec.channels,
                   spec.input_size, spec.fc_hidden, pool_after(spec.conv_layers))  # fmt: skip

    def __post_init__(self) -> None:
        # what cnn_kernels.c is sized for (CNNSpec allows 3..9 layers of 3x3 or 5x5)
        if not 1 <= self.layers <= 9 or self.kernel not in (1, 3, 5):
            size = f"{self.kernel}x{self.kernel}"
            raise ValueError(f"the CNN kernel takes 1 to 9 layers of 1x1, 3x3 or 5x5 "
                             f"kernels, not {self.layers} of {size}")  # fmt: skip

    name, samples = "CNN", "images"  # for messages

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.side**2,)

    def arguments(self) -> tuple[int, ...]:
        mask = sum(1 << layer for layer in self.pools)
        return (self.layers, self.kernel, self.channels, self.side, self.hidden, mask)


_CELL_CODES = {"lstm": 0, "gru": 1, "rnn": 2}  # recurrent_rows.c's LSTM, GRU, TANH


@dataclass(frozen=True)
class RecurrentShape(RowLayout):
    """What the per-row recurrent kernel needs of a models.RNN: its cell and sizes."""

    kind: str = "lstm"
    hidden: int = 0
    n_in: int = 0
    steps: int = 0

    name, samples = "recurrent", "inputs"  # for messages

    @classmethod
    def of(cls, spec: RNNSpec) -> RecurrentShape:
        return cls(_shapes(spec), spec.kind, spec.hidden, spec.n_in, spec.steps)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.steps, self.n_in)

    def arguments(self) -> tuple[int, ...]:
        return (_CELL_CODES[self.kind], self.hidden, self.n_in, self.steps)


KernelShape = CNNShape | RecurrentShape


def _pointers(tensors: Sequence[torch.Tensor]) -> Any:
    """A C array of the tensors' addresses (kept alive by the caller's tensors)."""
    return (ctypes.c_void_p * len(tensors))(*(t.data_ptr() for t in tensors))


def _threads() -> int:
    return torch.get_num_threads()  # as torch's own CPU kernels (torch.set_num_threads)


def _check_labels(y: torch.Tensor) -> None:
    if y.dtype != torch.int64 or not y.is_contiguous() or y.device.type != "cpu":
        raise ValueError("the kernels take contiguous int64 labels on the CPU")


def _check(tensor: torch.Tensor) -> None:
    """What C cannot check: a contiguous float32 tensor on the CPU."""
    if tensor.dtype != torch.float32 or tensor.device.type != "cpu":
        raise ValueError(f"the fused kernels take float32 CPU tensors, not {tensor.dtype} "
                         f"on {tensor.device}")  # fmt: skip
    if not tensor.is_contiguous():
        raise ValueError("the fused kernels take contiguous tensors")


def _shape(gates: torch.Tensor, blocks: int, *states: torch.Tensor | None) -> tuple[int, int, int]:
    """(R, H, B) of a gate tensor (R, blocks H, B), after checking every tensor (`_check`)
    and the states' shape (R, H, B)."""
    rows, features, batch = gates.shape
    expected = (rows, features // blocks, batch)
    for tensor in (gates, *states):
        if tensor is not None:
            _check(tensor)
    for state in states:
        if state is not None and tuple(state.shape) != expected:
            raise ValueError(f"a state of shape {tuple(state.shape)}, not {expected}")
    return expected


def _same_shape(gates: torch.Tensor, *others: torch.Tensor) -> None:
    for tensor in others:
        _check(tensor)
        if tensor.shape != gates.shape:
            raise ValueError(f"a tensor of shape {tuple(tensor.shape)}, not the gates' "
                             f"{tuple(gates.shape)}")  # fmt: skip


def _address(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def _blas_sgemm() -> int | None:
    """The address of the BLAS `sgemm_` that torch's CPU library links (MKL on x86
    builds), or None where it exports none."""
    library = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    for handle in (str(library), None):  # None: what the process has loaded globally
        try:
            return ctypes.cast(ctypes.CDLL(handle).sgemm_, ctypes.c_void_p).value
        except (OSError, AttributeError):
            continue
    return None


def kernels_for(device: torch.device) -> Kernels | None:
    """The fused kernels for tensors on `device`: None on any but a CPU (a GPU runs the
    torch-op steps), or where they are turned off or cannot be built here."""
    return kernels() if device.type == "cpu" else None


def kernels() -> Kernels | None:
    """The fused kernels, or None where they are turned off or cannot be built here."""
    if os.environ.get(_ENABLED, "1") == "0":
        return None
    settings = (os.environ.get(_CACHE, ""), os.environ.get("XDG_CACHE_HOME", ""))
    return _load(settings, os.environ.get("CC", ""))


@functools.cache
def _load(cache_settings: tuple[str, str], compiler: str) -> Kernels | None:
    """Built once per process and settings; a failure is logged once."""
    try:
        return Kernels(ctypes.CDLL(str(_build(_cache_dir(*cache_settings), compiler))))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:  # RuntimeError: no home
        log.warning("fused CPU kernels unavailable (%s): the LSTM, GRU, tanh RNN and CNN "
                    "steps run in torch ops, slower on a CPU; the kernels need a C compiler "
                    "(gcc, or CC) and a writable CAPACITY_KERNEL_CACHE", error)  # fmt: skip
        return None


def _cache_dir(setting: str, xdg_cache_home: str) -> Path:
    default = Path(xdg_cache_home or "~/.cache") / "capacity_service"
    return Path(setting or default).expanduser() / "kernels"


def _build(cache: Path, compiler: str) -> Path:
    """The shared library, compiled now unless this source, these flags and this CPU
    already have a build."""
    cc = compiler or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise OSError("no C compiler found (set CC)")
    sources = [source.read_bytes() for source in (*SOURCES, *HEADERS)]
    key = hashlib.sha256(b"\0".join([*sources, " ".join([cc, *FLAGS]).encode(),
                                     _cpu_features().encode()])).hexdigest()[:16]  # fmt: skip
    library = cache / f"kernels-{key}.so"
    if library.exists():
        return library
    cache.mkdir(parents=True, exist_ok=True)
    # built beside its final name and renamed into it: workers starting together each
    # build, and each rename is atomic
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        built = Path(scratch) / library.name
        run = subprocess.run([cc, *FLAGS, *map(str, SOURCES), "-o", str(built), "-lm"],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        if run.returncode != 0:
            raise OSError(f"{cc} failed: {run.stderr.strip()[-500:]}")
        os.replace(built, library)
    return library


def _cpu_features() -> str:
    """What -march=native builds for: the CPU's flags where Linux lists them."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine() + platform.processor()
    lines = cpuinfo.splitlines()
    flags = next((line for line in lines if line.startswith(("flags", "Features"))), "")
    return platform.machine() + flags
