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

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _resident_bytes()
    start = time.perf_counter()
    if case.implementation == "plain":
        with torch.no_grad():
            teacher_logits = teacher(teacher_hidden)
        out = self_distillation_loss(head(hidden), teacher_logits, response_mask, sample_mask, **options)
    else:
        out = chunked_self_distillation_loss(hidden, head, teacher_hidden, teacher, response_mask, sample_mask,
                                             chunk_size=case.chunk_size, **options)
    out.loss.backward()
    values = [out.loss.item(), out.information[0].item(), out.jsd[0].item(), out.entropy[0].item(),
              float(hidden.grad.float().norm()), float(head.weight.grad.float().norm())]
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _resident_bytes("VmHWM")
    return {**asdict(case), "seconds": seconds, "loss_bytes": peak - before, "peak_bytes": peak,
            "loss": values[0], "information": values[1], "jsd": values[2], "entropy": values[3],
            "grad_hidden_norm": values[4], "grad_head_norm": values[5]}


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
            progress=print) -> list[dict]:
    """Every (T, implementation) case in its own subprocess, T ascending, plain before chunked."""
    rows, plain_per_position, inputs = [], None, 0
    for length in sorted(lengths):
        for implementation in ("plain", "chunked"):
            case = Case(implementation, length, vocabulary, hidden, dtype, device, topk, chunk_size)
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
    return "\n".join(lines)


if __name__ == "__main__":  # one case, in the fresh process `measure` starts
    print(json.dumps(run_case(Case(**json.loads(sys.argv[1])))))
