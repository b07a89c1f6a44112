#!/usr/bin/env bash
# Continued pretraining that does no harm (issue 24): a one-seed screen of demo-recipe variants from
# the starter, at equal steps (equal work, whatever the machine's load), judged on the VALIDATION
# half of the held-out rows and heads: held-out MLM (random-token masks) against the starter's, and
# the relation probe. Resumable: an arm whose outputs exist is skipped.
#   bench/continue_screen.sh [OUT (runs/screen)] [STEPS (500)] [ARM ...]
# Needs runs/demo/prepared (./run_pretrain.sh builds it).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/screen}
STEPS=${2:-500}
shift $(( $# > 2 ? 2 : $# ))
CKBERT=.venv/bin/ckbert
PREPARED=${PREPARED:-runs/demo/prepared}
declare -A ARMS=(
  [recipe]=""
  [lr1e-4]="optim.lr=1.0e-4"
  [cmrm0.1]="cmrm.weight=0.1"
  [random30]="masking.strategy=random_token masking.rate=0.3"
  [random30_lr1e-4]="masking.strategy=random_token masking.rate=0.3 optim.lr=1.0e-4"
)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(recipe lr1e-4 cmrm0.1 random30 random30_lr1e-4)
mkdir -p "$OUT"
if [ ! -f "$OUT/starter.eval.json" ]; then
  $CKBERT eval --model models/starter --prepared "$PREPARED" --eval-rows 1024 --split validation --json \
    > "$OUT/starter.eval.json.tmp" && mv "$OUT/starter.eval.json.tmp" "$OUT/starter.eval.json"
  $CKBERT probe --kind relation --model models/starter --prepared "$PREPARED" --eval-rows 1024 \
    --split validation --heldout-share 0.2 --out "$OUT/starter.probe.json" --overwrite > /dev/null
fi
for arm in "${names[@]}"; do
  [ -n "${ARMS[$arm]+x}" ] || { echo "unknown arm $arm" >&2; exit 2; }
  dir="$OUT/$arm"
  [ -f "$dir/probe.json" ] && { echo "[screen] $arm: done"; continue; }
  echo "[screen] $arm: ${ARMS[$arm]:-the demo recipe}"
  resume=()
  [ -e "$dir/pretrain/checkpoints/latest" ] && resume=(--resume)  # a killed run goes on where it stopped
  # shellcheck disable=SC2086
  $CKBERT pretrain --config configs/pretrain/demo.yaml "${resume[@]}" out="$dir/pretrain" \
    data.prepared="$PREPARED" train.max_minutes=0 train.max_steps="$STEPS" train.save_every=100 ${ARMS[$arm]} \
    >> "$dir.log" 2>&1
  $CKBERT export "$dir/pretrain" --out "$dir/model" --overwrite >> "$dir.log" 2>&1
  $CKBERT eval --model "$dir/model" --prepared "$PREPARED" --split validation --json > "$dir/eval.json"
  $CKBERT probe --kind relation --model "$dir/model" --prepared "$PREPARED" --split validation \
    --out "$dir/probe.json" --overwrite >> "$dir.log" 2>&1
done
.venv/bin/python - "$OUT" <<'PY'
import json, pathlib, sys

out = pathlib.Path(sys.argv[1])
def row(name, ev, pr):
    e = json.loads(ev.read_text().splitlines()[-1])
    g = json.loads(pr.read_text())["groups"]
    acc = lambda k: "{:.1f} ({:.1f}-{:.1f})".format(g[k]["accuracy@1"], *g[k]["accuracy@1_ci95"]) if k in g else "-"
    return (f"| {name} | {e['eval_rand_mlm']:.3f} | {e['eval_rand_top1'] * 100:.1f} | "
            f"{acc('held_out, mention+tail texts, vs hop 2-3')} | {acc('held_out, tail texts, vs hop 2-3')} | "
            f"{acc('seen, mention+tail texts, vs hop 2-3')} | {g.get('held_out, tail texts, vs hop 2-3', {}).get('heads', '-')} |")
print("| arm | val. MLM (random-token) | top-1 % | held-out heads, mention+tail vs hop 2-3: acc@1 (95% CI) "
      "| held-out heads, tail texts | seen heads, mention+tail | held-out heads (n) |")
print("| --- | --- | --- | --- | --- | --- | --- |")
print(row("starter", out / "starter.eval.json", out / "starter.probe.json"))
for d in sorted(p for p in out.iterdir() if (p / "probe.json").is_file()):
    print(row(d.name, d / "eval.json", d / "probe.json"))
PY
