"""Throughput of the batched engine against a plain PyTorch loop, for every model kind.

For each model kind, size, K and minibatch size, trains K trials for a fixed number of
epochs (no early stop) three ways and times each:

- engine: `capacity_service.science.engine.train_trials`, the batched engine (kinds it
  does not batch yet run there one trial after another, and the table says so);
- plain: the loop a user would write, one trial after another: an nn.Module (FCDNN and
  CNN: `build_model`; LSTM, GRU, RNN: torch.nn.LSTM / GRU / RNN + a linear layer on the
  last step), torch.optim.SGD with momentum, cross-entropy, shuffled minibatches, and the
  accuracy over the N samples after each epoch;
- stack: a plain stacked autograd model written here (weights (K, ...) and batched matrix
  products, grouped convolutions for the CNN, torch.optim.SGD), all K trials sharing one
  batch order: what batching gives without a hand-written engine.

It prints sample-epochs per second, the speedups over the plain loop, and the engine's
achieved GFLOP/s against this device's measured float32 matmul peak.

    .venv/bin/python benchmarks/engine.py            # full table
    .venv/bin/python benchmarks/engine.py --quick    # a few minutes on 2 CPU cores
    .venv/bin/python benchmarks/engine.py --kinds lstm,gru --device cuda
    .venv/bin/python benchmarks/engine.py --json > now.json
    .venv/bin/python benchmarks/engine.py --baseline before.json   # compare speedups
    # the C kernels (recurrent kinds and CNN) against their torch-op steps:
    export KINDS=lstm,gru,rnn,cnn
    CAPACITY_NATIVE_KERNELS=0 .venv/bin/python benchmarks/engine.py --kinds $KINDS --json >ops
    .venv/bin/python benchmarks/engine.py --kinds $KINDS --baseline ops
    # against an earlier commit, run from a worktree of it with this venv:
    git worktree add /tmp/before COMMIT && (cd /tmp/before && PYTHONPATH=. \
        $OLDPWD/.venv/bin/python benchmarks/engine.py --kinds lstm --json) > before
    .venv/bin/python benchmarks/engine.py --kinds lstm --baseline before
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from capacity_service.science.data import Dataset, make_dataset
from capacity_service.science.device import DeviceUnavailableError, resolve_device
from capacity_service.science.engine import TrialConfig, native, train_trials
from capacity_service.science.models import build_model, pool_after
from capacity_service.specs import GATE_BLOCKS, MODEL_KINDS, CNNSpec, FCDNNSpec, RNNSpec, TrainSpec

Spec = FCDNNSpec | CNNSpec | RNNSpec
Forward = Callable[[torch.Tensor], torch.Tensor]  # (B, *input) -> (K, B, 2) logits

# (size, K, batch) per kind: size is the FCDNN width, the CNN channels or the RNN hidden
# size; the RNN sizes give about the same parameter count for the three cells
DEFAULT_CASES: dict[str, list[tuple[int, int, int]]] = {
    "fcdnn": [(32, 64, 32), (256, 64, 128)],
    "cnn": [(4, 32, 64)],
    "lstm": [(32, 32, 128), (32, 32, 32)],
    "gru": [(38, 32, 128)],
    "rnn": [(75, 32, 128)],
}
QUICK = (512, 2, 1, 8)  # N, epochs, repeat, largest K
QUICK_HELP = "N = 512, 2 epochs, 1 run, K <= 8 (a smoke test: speedups grow with K)"
STACK_EVAL_CHUNK = 256  # samples per evaluation pass of a stack (K copies of activations)


@dataclass(frozen=True)
class Case:
    kind: str
    size: int
    k: int
    batch: int

    @property
    def size_key(self) -> str:
        return "hidden" if self.kind in GATE_BLOCKS else "width"

    def spec(self) -> Spec:
        if self.kind == "fcdnn":
            return FCDNNSpec(width=self.size, depth=1)
        if self.kind == "cnn":
            return CNNSpec(kernel=3, conv_layers=3, channels=self.size, input_size=32)
        return RNNSpec(kind=self.kind, hidden=self.size, n_in=32, steps=5)


def cases(
    kinds: list[str],
    sizes: list[int] | None,
    ks: list[int] | None,
    batch: int | None,
    k_cap: int | None = None,
) -> list[Case]:
    """The default rows of each kind; --widths, --ks and --batch replace the size, K and
    batch of every default row (a list gives one row per value); `k_cap` caps the
    default K (--quick)."""
    chosen: list[Case] = []
    for kind in kinds:
        for size, k, rows in DEFAULT_CASES[kind]:
            for s in sizes or [size]:
                for kk in ks or [min(k, k_cap or k)]:
                    case = Case(kind, s, kk, batch or rows)
                    if case not in chosen:
                        chosen.append(case)
    return chosen


def multiply_adds(spec: Spec) -> int:
    """Multiply-adds of one sample's forward pass."""
    if isinstance(spec, FCDNNSpec):
        widths = [spec.input_bits] + [spec.width] * spec.depth + [2]
        return sum(a * b for a, b in itertools.pairwise(widths))
    if isinstance(spec, CNNSpec):
        side, c_in, total = spec.input_size, 1, 0
        pools = pool_after(spec.conv_layers)
        for layer in range(spec.conv_layers):
            total += spec.channels * c_in * spec.kernel**2 * side**2
            c_in = spec.channels
            if layer in pools:
                side //= 2
        features = spec.channels * side**2
        if spec.fc_hidden:
            return total + features * spec.fc_hidden + spec.fc_hidden * 2
        return total + features * 2
    gates = GATE_BLOCKS[spec.kind]
    return spec.steps * gates * spec.hidden * (spec.n_in + spec.hidden) + 2 * spec.hidden


# --- timing ------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(work: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    started = time.perf_counter()
    work()
    synchronize(device)
    return time.perf_counter() - started


def matmul_peak_gflops(device: torch.device, seconds: float = 1.0) -> float:
    size, calls = (4096, 10) if device.type == "cuda" else (1024, 1)
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    torch.mm(a, b)
    best, started = 0.0, time.perf_counter()
    while time.perf_counter() - started < seconds:

        def products() -> None:
            for _ in range(calls):
                torch.mm(a, b)

        best = max(best, calls * 2 * size**3 / timed(products, device) / 1e9)
    return best


def configs(k: int, n: int, epochs: int, batch: int) -> list[TrialConfig]:
    # patience beyond the budget and a small lr: every trial runs exactly `epochs` epochs
    train = TrainSpec(lr=0.01, epochs=epochs, batch_size=batch, patience=epochs + 1)
    return [TrialConfig(n=n, train=train, init_seed=i, shuffle_seed=1000 + i) for i in range(k)]


# --- the three trainers ------------------------------------------------------------------


def engine(spec: Spec, pool: Dataset, trials: list[TrialConfig], check: bool = True) -> str:
    """Train with the batched engine; its name for how it trained (batched, sequential)."""
    run = train_trials(spec, pool, trials)
    if check:
        for trial, outcome in zip(trials, run.outcomes, strict=True):
            if outcome is None or outcome.epochs != trial.train.epochs or outcome.diverged:
                raise SystemExit(
                    f"{spec.kind}: a trial ran {outcome and outcome.epochs} of "
                    f"{trial.train.epochs} epochs (diverged or memorized everything); the "
                    "timings would compare unequal work: raise --n or lower --epochs"
                )
    return run.engine


class PlainRecurrent(nn.Module):
    """What a user would write: torch.nn.LSTM / GRU / RNN and a linear layer on the last
    step's output."""

    def __init__(self, spec: RNNSpec) -> None:
        super().__init__()
        layer = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[spec.kind]
        self.recurrent = layer(spec.n_in, spec.hidden, batch_first=True)
        self.output = nn.Linear(spec.hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, n_in) -> (B, 2)
        out, _ = self.recurrent(x)
        return self.output(out[:, -1])  # type: ignore[no-any-return]


def plain_model(spec: Spec, seed: int, device: torch.device) -> nn.Module:
    if isinstance(spec, RNNSpec):
        torch.manual_seed(seed)
        return PlainRecurrent(spec).to(device)
    return build_model(spec, seed, device)


def plain(spec: Spec, pool: Dataset, trials: list[TrialConfig]) -> None:
    """The plain loop a user would write: module, SGD, cross-entropy, accuracy per epoch."""
    device = pool.x.device
    for trial in trials:
        model = plain_model(spec, trial.init_seed, device)
        optimizer = torch.optim.SGD(model.parameters(), lr=trial.train.lr, momentum=0.9)
        generator = torch.Generator(device=device).manual_seed(trial.shuffle_seed)
        x, y = pool.x[: trial.n], pool.y[: trial.n]
        for _ in range(trial.train.epochs):
            order = torch.randperm(trial.n, generator=generator, device=device)
            for start in range(0, trial.n, trial.train.batch_size):
                batch = order[start : start + trial.train.batch_size]
                loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
                optimizer.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
            with torch.no_grad():
                (model(x).argmax(1) == y).float().mean().item()


Stack = tuple[list[torch.Tensor], Forward]  # the parameters and the forward pass


def stacked_layers(
    models: Sequence[nn.Module], layer: type[nn.Module]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weights (K, ...), biases (K, ...)) of each `layer` module of the K models, as
    leaves that autograd trains."""
    per_model = [[m for m in model.modules() if isinstance(m, layer)] for model in models]
    return [
        (
            torch.stack([m.get_parameter("weight").detach() for m in modules]).requires_grad_(),
            torch.stack([m.get_parameter("bias").detach() for m in modules]).requires_grad_(),
        )
        for modules in zip(*per_model, strict=True)
    ]


def dense_stack(h: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """(K, B, in) through stacked linear layers (K, out, in): ReLU between, logits last."""
    for index, (w, b) in enumerate(layers):
        h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        if index < len(layers) - 1:
            h = torch.relu(h)
    return h


def stack_fcdnn(spec: FCDNNSpec, seeds: list[int], device: torch.device) -> Stack:
    """K FCDNNs as weights (K, out, in) and biases (K, out), torch.baddbmm per layer."""
    models = [build_model(spec, seed, device) for seed in seeds]
    layers = stacked_layers(models, nn.Linear)

    def forward(x: torch.Tensor) -> torch.Tensor:  # (B, n_in) -> (K, B, 2)
        return dense_stack(x.expand(len(seeds), *x.shape), layers)

    return [t for pair in layers for t in pair], forward


def stack_cnn(spec: CNNSpec, seeds: list[int], device: torch.device) -> Stack:
    """K CNNs as one with K * C channels: the first convolution reads the shared input,
    the later ones are grouped (groups = K); batched products for the linear layers."""
    models = [build_model(spec, seed, device) for seed in seeds]
    convs = stacked_layers(models, nn.Conv2d)  # (K, C, C_in, k, k), (K, C)
    dense = stacked_layers(models, nn.Linear)
    pools, k = pool_after(spec.conv_layers), len(seeds)

    def forward(x: torch.Tensor) -> torch.Tensor:  # (B, 1, S, S) -> (K, B, 2)
        for index, (w, b) in enumerate(convs):
            groups = 1 if index == 0 else k
            x = nn.functional.conv2d(
                x, w.flatten(0, 1), b.flatten(), padding=spec.kernel // 2, groups=groups
            )
            x = torch.relu(x)
            if index in pools:
                x = nn.functional.max_pool2d(x, 2)
        return dense_stack(x.reshape(x.shape[0], k, -1).transpose(0, 1), dense)

    return [t for pair in convs + dense for t in pair], forward


def stack_recurrent(spec: RNNSpec, seeds: list[int], device: torch.device) -> Stack:
    """K LSTM / GRU / tanh RNN cells as weights (K, in, G H), one torch.bmm per step, the
    cell written in torch operations (one bias per gate; the GRU's b_hn too)."""
    gates, hidden, k = GATE_BLOCKS[spec.kind], spec.hidden, len(seeds)

    def draw(generator: torch.Generator, fan_in: int, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).mul_((2 / fan_in) ** 0.5)

    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    w_ih = torch.stack([draw(g, spec.n_in, spec.n_in, gates * hidden) for g in generators])
    w_hh = torch.stack([draw(g, hidden, hidden, gates * hidden) for g in generators])
    w_out = torch.stack([draw(g, hidden, hidden, 2) for g in generators])
    params = [
        t.to(device).requires_grad_()
        for t in (
            w_ih,
            w_hh,
            torch.zeros(k, 1, gates * hidden),
            torch.zeros(k, 1, hidden),  # b_hn (GRU only)
            w_out,
            torch.zeros(k, 1, 2),
        )
    ]
    w_ih, w_hh, bias, bias_hn, w_out, b_out = params
    if spec.kind != "gru":
        del params[3]  # bias_hn

    def forward(x: torch.Tensor) -> torch.Tensor:  # (B, T, n_in) -> (K, B, 2)
        batch, steps, n_in = x.shape
        flat = x.reshape(1, batch * steps, n_in).expand(k, -1, -1)
        inputs = torch.baddbmm(bias, flat, w_ih).view(k, batch, steps, -1)  # all steps
        h = x.new_zeros(k, batch, hidden)
        c = x.new_zeros(k, batch, hidden)
        for t in range(steps):
            recurrent = torch.bmm(h, w_hh)  # (K, B, G H)
            if spec.kind == "lstm":
                i, f, g, o = (inputs[:, :, t] + recurrent).chunk(4, dim=2)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
            elif spec.kind == "gru":
                x_r, x_z, x_n = inputs[:, :, t].chunk(3, dim=2)
                h_r, h_z, h_n = recurrent.chunk(3, dim=2)
                r = torch.sigmoid(x_r + h_r)
                z = torch.sigmoid(x_z + h_z)
                n = torch.tanh(x_n + r * (h_n + bias_hn))
                h = (1 - z) * n + z * h
            else:
                h = torch.tanh(inputs[:, :, t] + recurrent)
        return torch.baddbmm(b_out, h, w_out)

    return params, forward


def build_stack(spec: Spec, seeds: list[int], device: torch.device) -> Stack:
    if isinstance(spec, FCDNNSpec):
        return stack_fcdnn(spec, seeds, device)
    if isinstance(spec, CNNSpec):
        return stack_cnn(spec, seeds, device)
    return stack_recurrent(spec, seeds, device)


def stack(spec: Spec, pool: Dataset, trials: list[TrialConfig]) -> None:
    """All K trials as one stacked autograd model, one shared batch order (the first
    trial's N, settings and shuffle seed), accuracy of every trial per epoch."""
    device, first = pool.x.device, trials[0]
    params, forward = build_stack(spec, [t.init_seed for t in trials], device)
    optimizer = torch.optim.SGD(params, lr=first.train.lr, momentum=0.9)
    generator = torch.Generator(device=device).manual_seed(first.shuffle_seed)
    n, batch_size, k = first.n, first.train.batch_size, len(trials)
    x, y = pool.x[:n], pool.y[:n]
    for _ in range(first.train.epochs):
        order = torch.randperm(n, generator=generator, device=device)
        for start in range(0, n, batch_size):
            batch = order[start : start + batch_size]
            logits = forward(x[batch])  # (K, B, 2)
            # the sum over trials of each one's mean loss: each trial gets its own gradient
            loss = nn.functional.cross_entropy(
                logits.reshape(-1, 2), y[batch].repeat(k), reduction="sum"
            ) / len(batch)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        with torch.no_grad():
            correct = torch.zeros(k, device=device)
            for start in range(0, n, STACK_EVAL_CHUNK):
                chunk = slice(start, start + STACK_EVAL_CHUNK)
                correct += (forward(x[chunk]).argmax(2) == y[chunk]).sum(1)
            (correct / n).tolist()


# --- the table ---------------------------------------------------------------------------


def measure(
    case: Case, n: int, epochs: int, repeat: int, device: torch.device, peak: float
) -> dict[str, Any]:
    """One row; each time is the fastest of `repeat` runs (a machine's speed drifts)."""
    spec = case.spec()
    pool = make_dataset(spec, n, seed=0, device=device)
    # first calls pay for allocator and kernel set-up: a short run of each, untimed
    warm = configs(2, min(n, 2 * case.batch), 1, case.batch)
    engine(spec, pool, warm, check=False)
    plain(spec, pool, warm)
    stack(spec, pool, warm)
    trials = configs(case.k, n, epochs, case.batch)
    how: list[str] = []
    t_engine = t_plain = t_stack = float("inf")
    for _ in range(repeat):  # interleaved, so that a slow spell hits all three alike
        t_engine = min(t_engine, timed(lambda: how.append(engine(spec, pool, trials)), device))
        t_plain = min(t_plain, timed(lambda: plain(spec, pool, trials), device))
        t_stack = min(t_stack, timed(lambda: stack(spec, pool, trials), device))
    sample_epochs = case.k * n * epochs
    # training: forward 2, backward 4 FLOPs per multiply-add and sample; evaluation: 2
    flops = sample_epochs * multiply_adds(spec) * (6 + 2)
    return {
        "kind": case.kind,
        case.size_key: case.size,
        "k": case.k,
        "batch": case.batch,
        "n": n,
        "epochs": epochs,
        "engine": how[0],
        # the step's elementwise work in the fused C kernels (engine/native.py)
        "native_kernels": spec.kind in native.KINDS and native.kernels_for(device) is not None,
        "samples_per_s": sample_epochs / t_engine,
        "plain_samples_per_s": sample_epochs / t_plain,
        "stack_samples_per_s": sample_epochs / t_stack,
        "speedup": t_plain / t_engine,
        "stack_speedup": t_plain / t_stack,
        "gflops": flops / t_engine / 1e9,
        "peak_gflops": peak,
        "device": str(device),
    }


def row_key(row: dict[str, Any]) -> tuple[str, int, int, int]:
    """(kind, width or hidden, K, batch); rows of the earlier FCDNN-only benchmark carry
    no kind and no batch (theirs was --batch, 32 unless given)."""
    size = row["width"] if "width" in row else row["hidden"]
    return (row.get("kind", "fcdnn"), size, row["k"], row.get("batch", 32))


def read_baseline(path: str) -> dict[tuple[str, int, int, int], float]:
    baseline = {}
    with open(path) as handle:
        for line in handle:
            if line.strip():
                row = json.loads(line)
                baseline[row_key(row)] = row["speedup"]
    return baseline


def print_table(rows: list[dict[str, Any]], baseline: dict[Any, float], repeat: int) -> None:
    first = rows[0]
    print(f"{first['device']}: float32 matmul peak {first['peak_gflops']:.1f} GFLOP/s; "
          f"N = {first['n']}, epochs {first['epochs']}, best of {repeat}")  # fmt: skip
    header = f"{'kind':>5} {'w/H':>4} {'K':>3} {'batch':>5} {'engine':>10} {'engine/s':>10} "
    header += f"{'plain/s':>9} {'speedup':>8} {'stack':>7} {'GFLOP/s':>8} {'% peak':>7}"
    print(header + ("  baseline" if baseline else ""))
    for row in rows:
        key = row_key(row)
        engine = row["engine"] + ("+C" if row.get("native_kernels") else "")
        line = (
            f"{row['kind']:>5} {key[1]:>4} {row['k']:>3} {row['batch']:>5} {engine:>10} "
            f"{row['samples_per_s']:>10,.0f} {row['plain_samples_per_s']:>9,.0f} "
            f"{row['speedup']:>7.1f}x {row['stack_speedup']:>6.1f}x "
            f"{row['gflops']:>8.1f} {row['gflops'] / row['peak_gflops']:>7.1%}"
        )
        before = baseline.get(key)
        if before is not None:
            line += f"  {before:.1f}x ({row['speedup'] / before - 1:+.0%})"
        print(line)
    print("speedup: plain loop time / engine time; stack: plain loop time / stacked-model time;"
          " +C: the step's C kernels")  # fmt: skip


def int_list(text: str) -> list[int]:
    return [int(value) for value in text.split(",")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=QUICK_HELP)
    parser.add_argument("--json", action="store_true", help="one JSON object per row")
    parser.add_argument("--baseline", help="a --json output to compare speedups with")
    kinds = ",".join(MODEL_KINDS)
    parser.add_argument("--kinds", default=kinds, help=f"comma-separated, default {kinds}")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--n", type=int, help="samples per trial (default 2048)")
    parser.add_argument("--epochs", type=int, help="epochs of every trial (default 3)")
    parser.add_argument("--batch", type=int, help="minibatch size of every row")
    parser.add_argument("--repeat", type=int, help="best of R runs (default 3)")
    parser.add_argument(
        "--widths", type=int_list, help="comma-separated FCDNN widths, CNN channels, RNN hidden"
    )
    parser.add_argument("--ks", type=int_list, help="comma-separated K values")
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    unknown = [kind for kind in kinds if kind not in MODEL_KINDS]
    if unknown:
        parser.error(f"unknown kinds {unknown}; choose from {', '.join(MODEL_KINDS)}")
    try:
        device = resolve_device(args.device)
    except DeviceUnavailableError as error:
        parser.error(str(error))
    n, epochs, repeat, k_cap = QUICK if args.quick else (2048, 3, 3, None)
    n, epochs, repeat = args.n or n, args.epochs or epochs, args.repeat or repeat
    baseline = read_baseline(args.baseline) if args.baseline else {}
    peak = matmul_peak_gflops(device)
    rows = []
    for case in cases(kinds, args.widths, args.ks, args.batch, k_cap):
        rows.append(measure(case, n, epochs, repeat, device, peak))
        if args.json:
            print(json.dumps(rows[-1]), flush=True)
    if not args.json:
        print_table(rows, baseline, repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
