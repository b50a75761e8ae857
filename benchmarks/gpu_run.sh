#!/usr/bin/env bash
# The GPU issue's numbers in one device call (a lent GPU machine, whose files come back from $OUT):
#   1. training throughput, our GPT vs transformers' GPT2LMHeadModel (train_throughput.py --mode gpu),
#      with a torch.profiler table of the top kernels when the ratio ours/peer is under 1.5;
#   2. the generation engine's aggregate tokens/s at 1, 16, 64 and 256 streams, fp32 and bf16, and
#      transformers' continuous batching (fp32) as the peer, on a RANDOMLY INITIALISED gpt2-mini-shaped
#      checkpoint made here (the trained weights do not travel; throughput does not depend on their values).
# What it reads beside the checkout (each ignored by .git/info/exclude, named in the call's carry):
#   .devcarry/gpt2/{encoder.json,vocab.bpe}   the tokenizer's BPE files  (cp ../shared/data/gpt2/* .devcarry/gpt2/)
#   .devcarry/instruction-data.json           the prompts' source        (cp ../shared/data/instruction/instruction-data.json .devcarry/)
#   .whl/*.whl                                transformers 5.23.0 (requirements-dev's pin) and regex, optional
# Smoke test on a CPU: DEVICE=cpu SHAPE=2/2/64 CLIENTS="1 2" NEW_TOKENS=4 SKIP_TRAIN=1 OUT=/tmp/o bash benchmarks/gpu_run.sh
set -u
OUT=${OUT:-/tmp/gpu_run_out}
DEVICE=${DEVICE:-cuda}
SHAPE=${SHAPE:-10/8/512}              # layers/heads/width of the random serving checkpoint (gpt2-mini)
CLIENTS=${CLIENTS:-1 16 64 256}
NEW_TOKENS=${NEW_TOKENS:-128}
REQUESTS=${REQUESTS:-2}
SYSTEMS=${SYSTEMS:-engine transformers}
PRECISIONS=${PRECISIONS:-fp32 bf16}
SERVING_OUT=${SERVING_OUT:-serving_gpu}
SERVING_ARGS=${SERVING_ARGS:-}         # e.g. --no-cudnn-sdpa
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || echo "wheel install failed: using the image's transformers"
fi
export LLM_BPE_DIR=$PWD/.devcarry/gpt2 LLM_INSTRUCTION_DATA=$PWD/.devcarry/instruction-data.json LLM_DEVICE=$DEVICE
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>/dev/null
  $PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
  nproc
} 2>&1 | tee "$OUT/env.txt"

if [ -z "${SKIP_TRAIN:-}" ]; then
  echo "=== 1. training throughput"; t=$SECONDS
  timeout ${TRAIN_TIMEOUT:-300} $PY benchmarks/train_throughput.py --mode gpu --out "$OUT/train_throughput_gpu.json" \
    --profile "$OUT/train_profile_gpu.txt" --profile-below 1.5 2>&1 | tee "$OUT/train.log"
  echo "train: rc ${PIPESTATUS[0]} in $((SECONDS - t)) s"
fi

echo "=== 2. serving"; t=$SECONDS
BASE=/tmp/random-gpt2-mini
$PY - "$BASE" "$SHAPE" <<'EOF'
import sys, torch
from transformers import GPT2Config, GPT2LMHeadModel
out, (layers, heads, width) = sys.argv[1], map(int, sys.argv[2].split("/"))
torch.manual_seed(0)
cfg = GPT2Config(vocab_size=50257, n_positions=1024, n_embd=width, n_layer=layers, n_head=heads, activation_function="gelu_new",
                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True)
GPT2LMHeadModel(cfg).save_pretrained(out)
print("random checkpoint:", out, sys.argv[2])
EOF
NOTE="Weights: a randomly initialised checkpoint of gpt2-mini's shape ($SHAPE, context 1024), made on the device (the trained weights cannot travel); throughput does not depend on the weight values. Greedy decoding, EOS stop off, so every request decodes exactly $NEW_TOKENS tokens."
if [ -n "${SDPA_CHECK:-}" ]; then
  timeout 120 $PY benchmarks/sdpa_decode_check.py --out "$OUT/sdpa_decode_check_gpu.json" 2>&1 | tee "$OUT/sdpa_check.log"
fi
timeout ${SERVING_TIMEOUT:-200} $PY benchmarks/serving.py --device "$DEVICE" --base "$BASE" --systems $SYSTEMS \
  --precisions $PRECISIONS --clients $CLIENTS --requests "$REQUESTS" --new-tokens "$NEW_TOKENS" --threads 8 \
  --out "$OUT/$SERVING_OUT" --note "$NOTE" $SERVING_ARGS 2>&1 | tee "$OUT/$SERVING_OUT.log"
echo "serving: rc ${PIPESTATUS[0]} in $((SECONDS - t)) s"
ls -la "$OUT"
