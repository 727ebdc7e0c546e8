"""Cold start: a fresh process imports the library, loads the MiniLM + GPT-2-small composite
(about 700 MB of float32 weights) and generates one token. DESIGN.md section 6 asks for at most
0.6x transformers' wall time with peak memory no higher than transformers'.

Each run is a new Python process, alternating transformers and seqweave; the wall time is
measured by the parent around the whole process (interpreter start-up included, the same
for both), the peak resident memory by the child (``VmHWM``; not ``ru_maxrss``, which a
child inherits from the parent that forked it, here one holding a model). Linux only. The composite is written
once by transformers' ``save_pretrained`` and read by both.

It also times what ``import seqweave`` adds to ``import torch`` (fresh processes, median).

    python benchmarks/cold_start.py [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from generate import build_composite  # noqa: E402  (the same composite the generation benchmark uses)

CHILD = {
    "transformers": """
import transformers
model = transformers.EncoderDecoderModel.from_pretrained({folder!r}).eval()
""",
    "seqweave": """
import seqweave
model = seqweave.EncoderDecoder.from_pretrained({folder!r})
""",
}
COMMON = """
import sys, time, torch
torch.set_num_threads(2)
t0 = time.perf_counter()
{load}
ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])
with torch.no_grad():
    out = model.generate(ids, max_new_tokens=1)
hwm = open("/proc/self/status").read().split("VmHWM:")[1].split()[0]
print(out.tolist(), hwm, file=sys.stderr)
"""


def run(library: str, folder: Path) -> tuple[float, int, str]:
    """Wall seconds, peak RSS in MiB, and the generated ids of one fresh process."""
    code = COMMON.format(load=CHILD[library].format(folder=str(folder)))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "PATH": ""})
    wall = time.perf_counter() - start
    ids, rss_kib = done.stderr.strip().splitlines()[-1].rsplit(" ", 1)
    return wall, int(rss_kib) // 1024, ids


IMPORT = """
import time, torch
t = time.perf_counter()
import seqweave
print(time.perf_counter() - t)
"""


def import_seconds() -> float:
    """What ``import seqweave`` adds to ``import torch`` in a fresh process."""
    done = subprocess.run([sys.executable, "-c", IMPORT], capture_output=True, text=True, check=True,
                          env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    return float(done.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per library")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "minilm2gpt2"
        build_composite(folder, "gpt2", small=False)
        results: dict[str, list[tuple[float, int, str]]] = {"transformers": [], "seqweave": []}
        for _ in range(args.runs):
            for library in results:
                results[library].append(run(library, folder))
    ids = {lib: {r[2] for r in rs} for lib, rs in results.items()}
    assert ids["transformers"] == ids["seqweave"], f"different tokens: {ids}"
    print(f"# {args.runs} fresh processes each, alternating; medians; same tokens {ids['seqweave']}")
    print("| library | wall s | peak RSS MiB |")
    print("|---|---|---|")
    med = {}
    for lib, rs in results.items():
        med[lib] = (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
        print(f"| {lib} | {med[lib][0]:.2f} | {med[lib][1]} |")
    print(f"\nseqweave / transformers: wall {med['seqweave'][0] / med['transformers'][0]:.2f}x "
          f"(goal <= 0.6x), peak memory {med['seqweave'][1] / med['transformers'][1]:.2f}x (goal <= 1.0x)")
    imports = sorted(import_seconds() for _ in range(max(args.runs, 5)))
    print(f"import seqweave after import torch: median {statistics.median(imports):.3f} s "
          f"(min {imports[0]:.3f}, max {imports[-1]:.3f}; goal <= 0.15 s)")


if __name__ == "__main__":
    main()
