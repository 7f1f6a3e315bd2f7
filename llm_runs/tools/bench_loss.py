"""`python -m llm_runs bench-loss`: peak memory and time of one micro-batch's self-distillation loss,
forward + backward, the plain path (logits h·Wᵀ and autograd) against the chunked one
(`llm_runs.chunked_loss`), at Qwen3-8B's head (V = 151 936, hidden 4 096) and response lengths T.

Each case runs in a fresh subprocess, so that its peak resident memory (CPU: the peak resident set, `VmHWM`, with glibc's
mmap threshold fixed at 1 MiB so that freed buffers leave at once) or peak allocation (CUDA:
`max_memory_allocated`) is its own. Both paths start from the same inputs — the
student's and the teacher's final hidden states (T, H), two output heads (V, H) (an EMA teacher has its
own) and the sampled tokens — and produce the same outputs: the loss,
∂L/∂h, ∂L/∂W, I, JSD, entropy and the sampled tokens' log-probabilities. "loss memory" is the peak
minus what was resident once the inputs existed; "peak" is the whole process's.

A plain case whose memory, extrapolated linearly in T from the largest T measured, would not fit in
the memory available is not run, and the table says so.

On a GPU each case first runs once untimed (CUDA's lazy module loading, cuBLAS's handle and its workspace are
the first call's, not the loss's), then `repeats` times (default 3), its median time reported and its peak
memory the largest over them. On the CPU it runs once (a peak resident set cannot be reset). `--profile` adds,
for every case, the operations that took most of one more run's device (or CPU) time: where the time goes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

QWEN3_8B = {"vocabulary": 151_936, "hidden": 4096}


@dataclass
class Case:
    implementation: str  # "plain" | "chunked"
    length: int  # T: response positions in the micro-batch
    vocabulary: int = QWEN3_8B["vocabulary"]
    hidden: int = QWEN3_8B["hidden"]
    dtype: str = "float32"
    device: str = "cpu"
    topk: int | None = 100
    chunk_size: int | None = None
    seed: int = 0
    repeats: int = 1
    profile: bool = False


def _resident_bytes(field: str = "VmRSS") -> int:
    """This process's resident memory now ("VmRSS") or at its peak ("VmHWM"), Linux. Not `ru_maxrss`: that
    one carries the parent's peak across fork + exec."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def run_case(case: Case) -> dict:
    """One forward + backward in this process; call it in a fresh one (see `measure`)."""
    import torch

    from llm_runs.chunked_loss import chunked_self_distillation_loss
    from llm_runs.loss import self_distillation_loss

    device, dtype = torch.device(case.device), getattr(torch, case.dtype)
    g = torch.Generator(device="cpu").manual_seed(case.seed)
    scale = case.hidden ** -0.5

    def randn(*shape, std=1.0):
        return (torch.randn(*shape, generator=g) * std).to(device=device, dtype=dtype)

    head = torch.nn.Linear(case.hidden, case.vocabulary, bias=False, device="meta")
    head.weight = torch.nn.Parameter(randn(case.vocabulary, case.hidden, std=4 * scale))  # logits of a few nats
    teacher = torch.nn.Linear(case.hidden, case.vocabulary, bias=False, device="meta")
    teacher.weight = torch.nn.Parameter(randn(case.vocabulary, case.hidden, std=4 * scale), requires_grad=False)
    hidden = randn(1, case.length, case.hidden).requires_grad_(True)
    teacher_hidden = randn(1, case.length, case.hidden)
    ids = torch.randint(0, case.vocabulary, (1, case.length), generator=g).to(device)
    response_mask, sample_mask = torch.ones(1, case.length, device=device), torch.ones(1, device=device)
    # the sampled tokens' log-probabilities are computed (for the importance weights, here 1: random tokens
    # would give weights of ~e^-15 and a loss of nothing)
    options = dict(beta=0.5, topk=case.topk, add_tail=True, response_ids=ids)

    def once():
        hidden.grad = head.weight.grad = None
        if case.implementation == "plain":
            with torch.no_grad():
                teacher_logits = teacher(teacher_hidden)
            out = self_distillation_loss(head(hidden), teacher_logits, response_mask, sample_mask, **options)
        else:
            out = chunked_self_distillation_loss(hidden, head, teacher_hidden, teacher, response_mask, sample_mask,
                                                 chunk_size=case.chunk_size, **options)
        out.loss.backward()
        return [out.loss.item(), out.information[0].item(), out.jsd[0].item(), out.entropy[0].item(),
                float(hidden.grad.float().norm()), float(head.weight.grad.float().norm())]

    cuda = device.type == "cuda"
    if cuda:
        once()  # untimed: the first call's lazy loading and cuBLAS set-up are not the loss's
        hidden.grad = head.weight.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _resident_bytes()
    times = []
    for _ in range(case.repeats if cuda else 1):
        start = time.perf_counter()
        values = once()  # .item() waits for the device
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if cuda else _resident_bytes("VmHWM")
    row = {**asdict(case), "seconds": sorted(times)[len(times) // 2], "seconds_all": times,
           "loss_bytes": peak - before, "peak_bytes": peak, "loss": values[0], "information": values[1],
           "jsd": values[2], "entropy": values[3], "grad_hidden_norm": values[4], "grad_head_norm": values[5]}
    if case.profile:
        row["profile"] = _profile(once, cuda)
    return row


def _profile(once, cuda: bool, top: int = 12) -> list[dict]:
    """The operations that took most of one run's device time (CPU time without a GPU): name, ms, calls."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        once()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)[:top]
    return [{"name": e.key, "ms": getattr(e, key) / 1e3, "calls": e.count} for e in events]


def _in_subprocess(case: Case) -> dict:
    # a fixed mmap threshold: freed buffers go back to the system at once, so the resident peak counts what
    # was alive, not what glibc's heap kept after its dynamic threshold moved (it varies with thread timing)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    done = subprocess.run([sys.executable, "-m", "llm_runs.tools.bench_loss", json.dumps(asdict(case))],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        killed = done.returncode in (-9, 137)
        return {**asdict(case), "error": "killed (out of memory?)" if killed else _last_error(done.stderr)}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _last_error(stderr: str) -> str:
    """The exception line a failed case ended with; CUDA's out-of-memory paragraph cut to its first sentence."""
    lines = stderr.strip().splitlines() or ["no output"]
    last = lines[-1]
    oom = re.search(r"OutOfMemoryError: CUDA out of memory\. (Tried to allocate [\d.]+ [GMK]iB)", last)
    return f"CUDA out of memory ({oom.group(1)[0].lower() + oom.group(1)[1:]})" if oom else last


def available_bytes() -> int:
    """MemAvailable (Linux), the memory a new process can still take without swapping."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


def measure(lengths=(1024, 4096, 8192), vocabulary: int = QWEN3_8B["vocabulary"], hidden: int = QWEN3_8B["hidden"],
            dtype: str = "float32", device: str = "cpu", topk: int | None = 100, chunk_size: int | None = None,
            progress=print, repeats: int = 3, profile: bool = False) -> list[dict]:
    """Every (T, implementation) case in its own subprocess, T ascending, plain before chunked."""
    rows, plain_per_position, inputs = [], None, 0
    for length in sorted(lengths):
        for implementation in ("plain", "chunked"):
            case = Case(implementation, length, vocabulary, hidden, dtype, device, topk, chunk_size,
                        repeats=repeats, profile=profile)
            if implementation == "plain" and plain_per_position is not None and device == "cpu":
                estimate = plain_per_position * length + inputs
                if estimate > 0.9 * available_bytes():
                    row = {**asdict(case), "skipped": f"needs ~{estimate / 2**30:.1f} GiB (extrapolated), "
                                                      f"{available_bytes() / 2**30:.1f} GiB available",
                           "estimated_loss_bytes": plain_per_position * length}
                    rows.append(row)
                    progress(f"T={length} plain: {row['skipped']}")
                    continue
            row = _in_subprocess(case)
            rows.append(row)
            if "error" in row:
                progress(f"T={length} {implementation}: {row['error']}")
                continue
            if implementation == "plain":
                plain_per_position, inputs = row["loss_bytes"] / length, row["peak_bytes"] - row["loss_bytes"]
            progress(f"T={length} {implementation}: {row['seconds']:.2f} s, loss memory {row['loss_bytes'] / 2**30:.2f} GiB, "
                     f"peak {row['peak_bytes'] / 2**30:.2f} GiB")
    return rows


def report(rows: list[dict]) -> str:
    gib = lambda b: f"{b / 2**30:.2f}"  # noqa: E731
    first = rows[0]
    lines = [f"one micro-batch's loss, forward + backward: V = {first['vocabulary']:,}, hidden {first['hidden']:,}, "
             f"{first['dtype']} on {first['device']}, top-{first['topk']} + tail, β = 1/2",
             "loss memory = peak − resident once the inputs (hidden states, two heads) exist; GiB = 2^30 bytes", "",
             "| T | plain: s | plain: loss GiB (peak) | chunked: s | chunked: loss GiB (peak) | memory plain/chunked | time chunked/plain | max rel. diff of loss, I, JSD, H, grads |",
             "|---|---|---|---|---|---|---|---|"]
    by = {(r["length"], r["implementation"]): r for r in rows}
    for length in sorted({r["length"] for r in rows}):
        plain, chunked = by.get((length, "plain"), {}), by.get((length, "chunked"), {})
        ok = lambda r: "seconds" in r  # noqa: E731
        cell_p = (f"{plain['seconds']:.2f}", f"{gib(plain['loss_bytes'])} ({gib(plain['peak_bytes'])})") if ok(plain) else \
            ("—", f"does not fit: {plain.get('skipped') or plain.get('error')}")
        cell_c = (f"{chunked['seconds']:.2f}", f"{gib(chunked['loss_bytes'])} ({gib(chunked['peak_bytes'])})") if ok(chunked) \
            else ("—", str(chunked.get("error")))
        if ok(plain) and ok(chunked):
            memory = f"{plain['loss_bytes'] / chunked['loss_bytes']:.1f}×"
            timing = f"{chunked['seconds'] / plain['seconds']:.2f}"
            keys = ("loss", "information", "jsd", "entropy", "grad_hidden_norm", "grad_head_norm")
            diff = f"{max(abs(chunked[k] - plain[k]) / abs(plain[k]) for k in keys):.1e}"
        elif "estimated_loss_bytes" in plain and ok(chunked):
            memory, timing, diff = f"≥{plain['estimated_loss_bytes'] / chunked['loss_bytes']:.1f}× (extrapolated)", "—", "—"
        else:
            memory = timing = diff = "—"
        lines.append(f"| {length:,} | {cell_p[0]} | {cell_p[1]} | {cell_c[0]} | {cell_c[1]} | {memory} | {timing} | {diff} |")
    for row in rows:
        if row.get("profile"):
            lines += ["", f"T={row['length']:,} {row['implementation']}: where one run's time goes"]
            lines += [f"  {p['ms']:9.2f} ms  {p['calls']:6d}×  {p['name']}" for p in row["profile"]]
    return "\n".join(lines)


def add_parser(sub) -> None:
    """`python -m llm_runs bench-loss`'s arguments."""
    bl = sub.add_parser("bench-loss", help="peak memory and time of one micro-batch's loss: plain against chunked")
    bl.add_argument("--lengths", type=lambda v: [int(x) for x in v.split(",")], default=[1024, 4096, 8192],
                    help="response positions T per micro-batch (default 1024,4096,8192)")
    bl.add_argument("--vocab", type=int, default=151_936, help="vocabulary V (default: Qwen3-8B's)")
    bl.add_argument("--hidden", type=int, default=4096, help="hidden size H (default: Qwen3-8B's)")
    bl.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: float32 on CPU, bfloat16 on CUDA")
    bl.add_argument("--device", default="cpu,cuda", help="comma-separated; cuda is skipped where there is none")
    bl.add_argument("--topk", type=int, default=100, help="the loss's support: the student's top-k (default 100)")
    bl.add_argument("--chunk-size", type=int, help="positions per chunk (default: 128 MiB of float32 logits, 1 GiB on a GPU)")
    bl.add_argument("--repeats", type=int, default=3, help="timed runs per case on a GPU, after an untimed one (default 3)")
    bl.add_argument("--profile", action="store_true", help="also list the operations that take a run's time")
    bl.add_argument("--json", help="append every case's record to this JSON-lines file")


def command(args) -> int:
    import torch

    from llm_runs.config import ConfigError

    devices = [d for d in args.device.split(",") if d != "cuda" or torch.cuda.is_available()]
    if not devices:
        raise ConfigError(f"--device {args.device}: no CUDA device is visible")
    for device in devices:
        rows = measure(args.lengths, args.vocab, args.hidden, args.dtype or ("bfloat16" if device == "cuda" else "float32"),
                       device, args.topk, args.chunk_size, progress=lambda line: print(line, file=sys.stderr, flush=True),
                       repeats=args.repeats, profile=args.profile)
        print(report(rows) + "\n", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
    return 0


if __name__ == "__main__":  # one case, in the fresh process `measure` starts
    print(json.dumps(run_case(Case(**json.loads(sys.argv[1])))))
