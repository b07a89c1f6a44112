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
# Each arm is the demo recipe (configs/pretrain/demo.yaml: random-token masks 30%, multi-hop CMRM,
# lr 1e-4) with one change. The screen of 2026-12-07 ran against the recipe of that day (LMLM 15%,
# in-batch CMRM only, lr 3e-4); its arms are in docs/results.md with that commit.
declare -A ARMS=(
  [recipe]=""
  [lmlm15]="masking.strategy=lmlm masking.rate=0.15"
  [lr3e-4]="optim.lr=3.0e-4"
  [cmrm0.1]="cmrm.weight=0.1"
  [inbatch_only]="cmrm.negatives=0"
)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(recipe lmlm15 lr3e-4 cmrm0.1 inbatch_only)
mkdir -p "$OUT"
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
# the starter on the same items: the held-out heads of the first arm's CMRM (its config.json ckbert_split)
if [ ! -f "$OUT/starter.probe.json" ]; then
  share=$(.venv/bin/python -c 'import json, sys; print(json.load(open(sys.argv[1]))["ckbert_split"]["heldout_heads"])' \
    "$OUT/${names[0]}/model/config.json")
  $CKBERT eval --model models/starter --prepared "$PREPARED" --eval-rows 1024 --split validation --json \
    > "$OUT/starter.eval.json.tmp" && mv "$OUT/starter.eval.json.tmp" "$OUT/starter.eval.json"
  $CKBERT probe --kind relation --model models/starter --prepared "$PREPARED" --eval-rows 1024 \
    --split validation --heldout-share "$share" --out "$OUT/starter.probe.json" --overwrite > /dev/null
fi
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
