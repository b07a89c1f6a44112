"""End-to-end `ckbert prepare` speed on the demo corpus (People's Daily, plain text).

Runs `ckbert prepare` as a subprocess per configuration and reports characters per second:
- wall: end to end (setup included: KG store copy, tokenizer, annotator and linker build);
- shards: characters per second of the shard phase alone (the run's own summary: setup = KG store,
  tokenizer folder, annotator and linker; the rest of the wall time is interpreter start-up, imports
  and writing the manifest);
- cpu: characters per CPU-second of the run and its workers (RUSAGE_CHILDREN), times the number of
  workers: what the run would reach with that many cores to itself. The machine this was measured
  on is shared, so the wall figure depends on the neighbours' load; all are printed.
Target (issue 2): >= 200,000 characters/s with jieba on 2 cores.

    python bench/prepare_speed.py [--demo DIR] [--workers 2] [--max-chars N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {
    "jieba": ["--annotator", "jieba"],
    "pretagged": ["--format", "pretagged", "--annotator", "pretagged"],
}


def _ckbert(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from ckbert.cli import main; sys.exit(main(sys.argv[1:]))", *args]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", type=Path, default=None, help="existing `ckbert demo-data` folder")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-chars", type=int, default=None)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = p.parse_args()
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        demo = args.demo
        if demo is None:
            demo = tmp / "demo"
            subprocess.run(_ckbert("demo-data", "--out", str(demo)), check=True, env=env, stdout=subprocess.DEVNULL)
        # Shared inputs built once, outside the timing: the KG store and the vocabulary.
        base = tmp / "base"
        subprocess.run(_ckbert("prepare", "--corpus", str(demo / "people_daily_plain.txt"), "--kg", str(demo / "cmekg.tsv"),
                               "--out", str(base), "--build-vocab", "--max-chars", "20000", "--quiet"),
                       check=True, env=env, stdout=subprocess.DEVNULL)
        rows = []
        for name in args.configs:
            corpus = demo / ("people_daily.txt" if name == "pretagged" else "people_daily_plain.txt")
            out = tmp / name
            cmd = _ckbert("prepare", "--corpus", str(corpus), "--kg", str(base / "kg"), "--tokenizer", str(base / "tokenizer"),
                          "--out", str(out), "--workers", str(args.workers), "--quiet", *CONFIGS[name])
            if args.max_chars:
                cmd += ["--max-chars", str(args.max_chars)]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            manifest = json.loads((out / "manifest.json").read_text())
            counts = manifest["counts"]
            chars = counts["characters"]
            m = re.search(r"time ([\d.]+)s \(setup ([\d.]+)s, shards ([\d.]+)s\)", proc.stdout)
            setup_s, shards_s = (float(m.group(2)), float(m.group(3))) if m else (float("nan"), float("nan"))
            rows.append({"config": name, "annotator": manifest["annotator"]["version"], "characters": chars,
                         "wall_s": round(wall, 1), "setup_s": setup_s, "shards_s": shards_s, "cpu_s": round(cpu, 1),
                         "chars_per_s_wall": round(chars / wall), "chars_per_s_shards": round(chars / shards_s) if m else None,
                         "chars_per_s_cpu_x_workers": round(chars / cpu * args.workers),
                         "mentions_per_sentence": round(counts["mentions"] / counts["sentences"], 3)})
            print(json.dumps(rows[-1]), flush=True)
            print(proc.stdout.strip().splitlines()[-1], flush=True)
    print(f"\n{'config':>10} {'chars':>9} {'wall s':>7} {'setup s':>8} {'shards s':>9} {'cpu s':>7} {'chars/s wall':>13} "
          f"{'chars/s shards':>15} {'chars/s (cpu, ' + str(args.workers) + ' cores)':>22} {'wall vs 200k':>13}")
    for r in rows:
        print(f"{r['config']:>10} {r['characters']:>9} {r['wall_s']:>7} {r['setup_s']:>8} {r['shards_s']:>9} {r['cpu_s']:>7} "
              f"{r['chars_per_s_wall']:>13} {r['chars_per_s_shards']!s:>15} {r['chars_per_s_cpu_x_workers']:>22} "
              f"{r['chars_per_s_wall'] / 200_000:>13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
