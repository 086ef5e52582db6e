"""The simulator fidelity table over HTTP: `fleetgate bench` against
`fleetgate sim --profile h200-llama-3.1-8b`, on the reference workloads recorded on a real H200
(completions, token-id prompts, ignore_eos, streamed).

    python benchmarks/sim_fidelity_http.py [--out bench-out/fidelity] [--rows 0,1,2]

Also checks that the load tester's mean TTFT agrees with the simulator's own (its TTFT histogram sum/count):
both measure to the first token, one at the client and one in the server.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleetgate.sim.calibrate import ROWS, TOLERANCE, requests_for
from procs import free_port, start_sim


def sim_mean_ttft(port: int) -> float:
    total = count = 0.0
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics").text.splitlines():
        if line.startswith("vllm:time_to_first_token_seconds_sum"):
            total = float(line.rsplit(" ", 1)[1])
        elif line.startswith("vllm:time_to_first_token_seconds_count"):
            count = float(line.rsplit(" ", 1)[1])
    return total / count if count else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench-out/fidelity"))
    ap.add_argument("--rows", default=",".join(str(i) for i in range(len(ROWS))))
    args = ap.parse_args()
    lines = []
    for i in (int(x) for x in args.rows.split(",")):
        row = ROWS[i]
        port = free_port()
        flags = ["--max-num-seqs", "1024", *(["--enforce-eager"] if row.eager else [])]
        proc = start_sim(port, *flags, model="llama-8b")
        out = args.out / f"row{i}"
        try:
            cmd = [
                sys.executable, "-m", "fleetgate", "bench", "--url", f"http://127.0.0.1:{port}/v1",
                "--model", "llama-8b", "--api", "completions", "--token-ids", "--workload", "random",
                "--input-len", str(row.input_len), "--output-len", str(row.output_len),
                "--load", f"concurrency={row.concurrency}",
                "--num-requests", str(requests_for(row)), "--out", str(out), "--processes", "1",
            ]  # fmt: skip
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            server_ttft = sim_mean_ttft(port)
        finally:
            proc.terminate()
            proc.wait(10)
        s = json.loads((out / "results.json").read_text())["summary"]
        got = {
            "tok_s": s["output_tok_s"],
            "ttft_p50": s["ttft"]["p50"],
            "ttft_p90": s["ttft"]["p90"],
            "itl_p50": s["itl"]["p50"],
        }
        cells = []
        for key, tol in TOLERANCE.items():
            want = getattr(row, key)
            err = got[key] / want - 1
            scale, unit = (1, "") if key == "tok_s" else (1000, " ms")
            mark = "" if abs(err) <= tol else " (out)"
            cells.append(f"{got[key] * scale:,.1f}{unit} vs {want * scale:,.1f}{unit} ({err:+.0%}{mark})")
        agree = s["ttft"]["mean"] / server_ttft - 1
        lines.append(f"| {row.name} | " + " | ".join(cells) + f" | {agree:+.1%} |")
    print("| row | out tok/s | TTFT p50 | TTFT p90 | ITL p50 | bench vs sim mean TTFT |")
    print("|---|---|---|---|---|---|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
