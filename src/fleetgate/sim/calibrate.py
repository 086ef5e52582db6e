"""`fleetgate sim calibrate`: the engine model against the runs recorded on a real H200, in virtual time.

The reference workloads are closed loops of completions with token-id prompts and `ignore_eos`, measured at
the client (shared/vllm-reference/README.md). The engine runs them without HTTP on a virtual clock: what it
predicts is the GPU-side schedule plus the profile's per-request overhead, nothing of this machine's speed.
Rows marked `fit` may be used to fit the step coefficients (`--fit`); the others only check them.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

from fleetgate.sim.engine import Engine, EngineArgs, EngineRequest
from fleetgate.sim.profiles import Profile, StepModel, load_profile
from fleetgate.tokenizer import TextSampler, Tokenizer
from fleetgate.worker.metrics import EngineStats


@dataclass(frozen=True)
class Row:
    name: str
    eager: bool
    input_len: int
    output_len: int
    concurrency: int
    fit: bool
    # recorded: output tokens/s, TTFT p50 and p90, ITL p50 (seconds)
    tok_s: float
    ttft_p50: float
    ttft_p90: float
    itl_p50: float


ROWS = (
    Row("default 1024/128 c1", False, 1024, 128, 1, True, 195, 0.031, 0.038, 0.0049),
    Row("default 1024/128 c8", False, 1024, 128, 8, False, 1205, 0.190, 0.191, 0.0052),
    Row("default 1024/128 c32", False, 1024, 128, 32, False, 2649, 0.545, 0.747, 0.0079),
    Row("default 256/256 c256", False, 256, 256, 256, True, 8720, 0.934, 1.564, 0.0256),
    Row("default 8000/64 c8", False, 8000, 64, 8, True, 126, 1.035, 1.519, 0.0366),
    Row("eager 1024/128 c1", True, 1024, 128, 1, True, 86, 0.041, 0.051, 0.0114),
    Row("eager 1024/128 c32", True, 1024, 128, 32, False, 1772, 0.540, 0.779, 0.0137),
)
# Sequential requests sharing a 4,096-token prefix plus 64 new tokens: first 108 ms, later ones ~20 ms.
PREFIX_HIT_MISS_RATIO = 0.0195 / 0.108


@dataclass
class Outcome:
    tok_s: float
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)

    def q(self, values: list[float], p: float) -> float:
        """Linear interpolation between ranks, as `fleetgate bench` (and numpy) compute quantiles."""
        if len(values) == 1:
            return values[0]
        return statistics.quantiles(values, n=100, method="inclusive")[round(p * 100) - 1]


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _engine(profile: Profile, step: StepModel, eager: bool) -> tuple[Engine, _Clock]:
    clock = _Clock()
    args = EngineArgs(
        max_model_len=profile.max_model_len,
        max_num_seqs=profile.limits.max_num_seqs,
        max_num_batched_tokens=profile.limits.max_num_batched_tokens,
        num_gpu_blocks=profile.kv.num_gpu_blocks,
        block_size=profile.kv.block_size,
        enforce_eager=eager,
    )
    stats = EngineStats("calibrate", {}, None, tool_parser=False)
    engine = Engine(
        profile.model_copy(update={"step": step}), args, TextSampler(Tokenizer()), stats, clock=clock
    )
    return engine, clock


def run_closed_loop(
    profile: Profile,
    step: StepModel,
    eager: bool,
    prompts: Sequence[list[int]],
    output_len: int,
    concurrency: int,
) -> Outcome:
    """Clients that each send the next request as soon as their last one finished."""
    engine, clock = _engine(profile, step, eager)
    rng = random.Random(0)
    todo = list(prompts)
    sent: dict[str, float] = {}
    arrivals: list[tuple[float, EngineRequest]] = []
    out = Outcome(0.0)
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    done = 0
    total_tokens = 0

    def send(at: float) -> None:
        req = EngineRequest(rid=str(len(todo)), prompt=todo.pop(), max_tokens=output_len, rng=rng)
        sent[req.rid] = at
        # The request reaches the engine after the client-to-engine overhead (HTTP, tokenization).
        arrivals.append((at + step.overhead, req))

    for _ in range(min(concurrency, len(todo))):
        send(0.0)
    while done < len(prompts):
        arrivals.sort(key=lambda a: a[0])
        while arrivals and arrivals[0][0] <= clock.t:
            at, req = arrivals.pop(0)
            req.arrival = at
            engine.add(req)
        if not engine.running and not engine.waiting:
            clock.t = arrivals[0][0]
            continue
        batch = engine.schedule()
        clock.t += engine.step_seconds(batch)
        engine.postprocess(batch, clock.t)
        for s in batch:
            req = s.seq
            key = req.rid
            if req.pending:
                req.pending.clear()
                if key not in first:
                    first[key] = clock.t
                    out.ttft.append(clock.t - sent[key])
                else:
                    out.itl.append(clock.t - last[key])
                last[key] = clock.t
            if req.finish_reason is not None and key in sent:
                done += 1
                total_tokens += len(req.output)
                del sent[key]
                if todo:
                    send(clock.t)
    out.tok_s = total_tokens / clock.t
    return out


def _prompts(n: int, length: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(256, 128000) for _ in range(length)] for _ in range(n)]


def requests_for(row: Row) -> int:
    """How many requests a reference run sent. With several clients the recorded TTFTs show a single wave
    (e.g. 8000/64 c8: p50 and p90 fall on the 4th and 8th of eight sequential prefills), so each client sent
    one request; a single client sent a series."""
    return row.concurrency if row.concurrency > 1 else 16


def predict(profile: Profile, step: StepModel, row: Row) -> dict[str, float]:
    n = requests_for(row)
    out = run_closed_loop(
        profile,
        step,
        row.eager,
        _prompts(n, row.input_len, hash(row.name) & 0xFFFF),
        row.output_len,
        row.concurrency,
    )
    return {
        "tok_s": out.tok_s,
        "ttft_p50": out.q(out.ttft, 0.5),
        "ttft_p90": out.q(out.ttft, 0.9),
        "itl_p50": statistics.median(out.itl),
    }


def predict_prefix_ratio(profile: Profile, step: StepModel) -> float:
    rng = random.Random(1)
    shared = [rng.randrange(256, 128000) for _ in range(4096)]
    prompts = [shared + [rng.randrange(256, 128000) for _ in range(64)] for _ in range(6)]
    out = run_closed_loop(profile, step, False, prompts[::-1], 8, 1)
    return statistics.median(out.ttft[1:]) / out.ttft[0]


TOLERANCE = {"tok_s": 0.25, "ttft_p50": 0.25, "ttft_p90": 0.30, "itl_p50": 0.25}


def _loss(profile: Profile, step: StepModel, rows: Sequence[Row]) -> float:
    err = 0.0
    for row in rows:
        got = predict(profile, step, row)
        for key in TOLERANCE:
            err += math.log(got[key] / getattr(row, key)) ** 2
    err += math.log(predict_prefix_ratio(profile, step) / PREFIX_HIT_MISS_RATIO) ** 2
    return err


def fit(profile: Profile, rows: Sequence[Row], progress: Callable[[int, float], None]) -> StepModel:
    """Nelder-Mead in log space over the step coefficients, on the fit rows only."""
    keys = ["b0", "b_eager", "b_tok", "b_seq", "b_kv", "b_kv2", "b_attn", "overhead"]
    base = profile.step.model_dump()

    def model(x: Sequence[float]) -> StepModel:
        return StepModel(**{**base, **{k: math.exp(v) for k, v in zip(keys, x, strict=True)}})

    def f(x: Sequence[float]) -> float:
        return _loss(profile, model(x), rows)

    x0 = [math.log(max(base[k], 1e-13)) for k in keys]
    simplex = [x0] + [[v + (0.3 if i == j else 0.0) for j, v in enumerate(x0)] for i in range(len(x0))]
    scores = [f(x) for x in simplex]
    for it in range(120):
        order = sorted(range(len(simplex)), key=lambda i: scores[i])
        simplex = [simplex[i] for i in order]
        scores = [scores[i] for i in order]
        progress(it, scores[0])
        centroid = [sum(p[j] for p in simplex[:-1]) / (len(simplex) - 1) for j in range(len(x0))]
        worst = simplex[-1]
        refl = [c + (c - w) for c, w in zip(centroid, worst, strict=True)]
        fr = f(refl)
        if fr < scores[0]:
            exp = [c + 2 * (c - w) for c, w in zip(centroid, worst, strict=True)]
            fe = f(exp)
            simplex[-1], scores[-1] = (exp, fe) if fe < fr else (refl, fr)
        elif fr < scores[-2]:
            simplex[-1], scores[-1] = refl, fr
        else:
            con = [c + 0.5 * (w - c) for c, w in zip(centroid, worst, strict=True)]
            fc = f(con)
            if fc < scores[-1]:
                simplex[-1], scores[-1] = con, fc
            else:
                best = simplex[0]
                simplex = [best] + [
                    [b + 0.5 * (v - b) for b, v in zip(best, p, strict=True)] for p in simplex[1:]
                ]
                scores = [scores[0]] + [f(p) for p in simplex[1:]]
    return model(simplex[0])


def report(profile: Profile, step: StepModel) -> tuple[Table, bool]:
    table = Table("row", "use", "metric", "predicted", "recorded", "error", "ok", title=f"{profile.name}")
    all_ok = True
    for row in ROWS:
        got = predict(profile, step, row)
        for key, tol in TOLERANCE.items():
            want = getattr(row, key)
            err = got[key] / want - 1
            ok = abs(err) <= tol
            all_ok &= ok or row.fit
            scale = 1 if key == "tok_s" else 1000
            unit = "" if key == "tok_s" else " ms"
            table.add_row(
                row.name,
                "fit" if row.fit else "check",
                key,
                f"{got[key] * scale:,.1f}{unit}",
                f"{want * scale:,.1f}{unit}",
                f"{err:+.0%}",
                "yes" if ok else "NO",
            )
    ratio = predict_prefix_ratio(profile, step)
    err = ratio / PREFIX_HIT_MISS_RATIO - 1
    ok = abs(err) <= 0.30
    want = f"{PREFIX_HIT_MISS_RATIO:.3f}"
    verdict = "yes" if ok else "NO"
    table.add_row("prefix 4096+64 seq.", "fit", "hit/miss TTFT", f"{ratio:.3f}", want, f"{err:+.0%}", verdict)
    return table, all_ok


def main(profile_name: str, refit: bool) -> int:
    console = Console(width=120)
    profile = load_profile(profile_name)
    step = profile.step
    if refit:
        with console.status("fitting") as status:
            step = fit(
                profile, [r for r in ROWS if r.fit], lambda i, s: status.update(f"fitting: {i} loss {s:.4f}")
            )
        console.print("fitted step model:", step.model_dump())
    table, ok = report(profile, step)
    console.print(table)
    console.print("all check rows within tolerance" if ok else "some check rows are out of tolerance")
    return 0 if ok else 1
