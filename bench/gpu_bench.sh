#!/usr/bin/env bash
# gpu_bench.sh - the GPU table, in one command on the GPU machine.
#   bench/gpu_bench.sh            (env: BIN=dir with vllm-metal, gpu_decode and lib/ [.gpu];
#                                  MODELS=dir for the generated models [/tmp/vm-gpu-models];
#                                  STREAMS="1 8 32 64 128"; SKIP_PEER=1; SKIP_SMOL=1; EXTRA_MODELS="name=path ...")
# Generates the random models with bench/gpu_transformers_peer.py (fixed seed,
# bf16, saved with save_pretrained): Qwen2.5-1.5B's shapes, and SmolLM2-135M's
# shapes. Then per model: batch-1 decode tok/s (bench/gpu_decode.sh's driver:
# 32-token prompt, 128 greedy steps; the median of three runs), and output tok/s of
# `vllm-metal throughput --num-prompts N --input-len 128 --output-len 128` at
# each N in STREAMS. The HBM roofline is measured with a device copy (torch);
# bytes per decode step = the weight bytes of the safetensors file (the tied
# embedding is read once, as lm_head). transformers' generate runs at batch 1
# and 32 on the 1.5B model. The 1.5B model is also quantized to MLX affine
# 4-bit (bench/gpu_mlx_quantize.py; SKIP_MLX=1 leaves it out). Prints a table
# at the end.
set -uo pipefail
BIN=${BIN:-.gpu}
MODELS=${MODELS:-/tmp/vm-gpu-models}
STREAMS=${STREAMS:-"1 8 32 64 128"}
export LD_LIBRARY_PATH=$BIN/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export VLLM_MLX_DEVICE=gpu
LOG=${LOG:-$(mktemp -d)}
mkdir -p "$MODELS" "$LOG"

py() { python3 "$@"; }

# ---- models and the transformers peer ----
Q=$MODELS/qwen2.5-1.5b-rand-bf16 S=$MODELS/smollm2-135m-rand-bf16
if [ -z "${SKIP_PEER:-}" ]; then
    py bench/gpu_transformers_peer.py "$Q" --batches 1,32 | tee "$LOG/peer.jsonl"
else
    py bench/gpu_transformers_peer.py "$Q" --no-time | tee "$LOG/peer.jsonl"
fi
[ -n "${SKIP_SMOL:-}" ] || py bench/gpu_transformers_peer.py "$S" --shape smollm2 --no-time > /dev/null
# the 1.5B model as an MLX affine 4-bit checkpoint (group 64, bf16 scales)
Q4=$MODELS/qwen2.5-1.5b-rand-mlx4
[ -n "${SKIP_MLX:-}" ] || [ -f "$Q4/model.safetensors" ] || py bench/gpu_mlx_quantize.py "$Q" "$Q4" > /dev/null

# ---- HBM bandwidth: a 2 GiB device-to-device copy (read + write bytes / time) ----
BW=$(py - <<'PY'
import torch, time
n = 1 << 30
a = torch.empty(n, dtype=torch.int16, device="cuda"); b = torch.empty_like(a)
for _ in range(3): b.copy_(a)
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(20): b.copy_(a)
torch.cuda.synchronize(); dt = (time.perf_counter() - t) / 20
print(f"{4 * n / dt / 1e9:.0f}")
PY
)
echo "measured copy bandwidth: $BW GB/s"

step_bytes() { py -c "
import json, struct, sys, glob
tot = 0
for f in glob.glob(sys.argv[1] + '/*.safetensors'):
    with open(f, 'rb') as fh:
        n = struct.unpack('<Q', fh.read(8))[0]; h = json.loads(fh.read(n))
    for k, v in h.items():
        if k != '__metadata__': tot += v['data_offsets'][1] - v['data_offsets'][0]
print(tot)" "$1"; }

run_model() {   # name path
    local name=$1 path=$2 out
    local runs=()
    for r in 1 2 3; do   # three runs, the median kept (one run on a shared card can be far off)
        out=$(timeout 300 bash bench/gpu_decode.sh "$path" vulkan 128 2>&1 | tee -a "$LOG/$name.decode.log" | grep -o 'decode 128 tokens [0-9.]* tok/s' | awk '{print $4}')
        [ -n "$out" ] && runs+=("$out")
    done
    out=$(printf '%s\n' "${runs[@]}" | sort -g | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]}')
    echo "$name decode1 runs: ${runs[*]}" | tee -a "$LOG/decode_runs"
    echo "$name decode1 ${out:-fail}" | tee -a "$LOG/results"
    for n in $STREAMS; do
        out=$(timeout 300 "$BIN/vllm-metal" throughput --model "$path" --num-prompts "$n" --input-len 128 --output-len 128 \
              --max-model-len 512 2>&1 | tee -a "$LOG/$name.tp$n.log" | grep -o '[0-9.]* output tokens/s' | awk '{print $1}')
        echo "$name streams$n ${out:-fail}" | tee -a "$LOG/results"
    done
}

export GPU_DECODE_BIN=$BIN/gpu_decode
# The first engine run on a freshly started machine is up to 2.5x slower at one
# stream (seen on H100s: 141-146 tok/s, then 334-370 in every later run), so
# one short run warms the machine up before anything is timed.
timeout 120 "$BIN/vllm-metal" throughput --model "$Q" --num-prompts 1 --input-len 16 --output-len 32 --max-model-len 512 > /dev/null 2>&1
run_model qwen15b "$Q"
[ -n "${SKIP_MLX:-}" ] || run_model qwen15b_mlx4 "$Q4"
[ -n "${SKIP_SMOL:-}" ] || run_model smollm2 "$S"
for m in ${EXTRA_MODELS:-}; do run_model "${m%%=*}" "${m#*=}"; done

# ---- table ----
QB=$(step_bytes "$Q")
Q4B=$( [ -f "$Q4/model.safetensors" ] && step_bytes "$Q4" || echo 0)
py - "$LOG/results" "$LOG/peer.jsonl" "$BW" "$QB" "$STREAMS" "$Q4B" <<'PY'
import json, sys
res = {}
for line in open(sys.argv[1]):
    m, k, v = line.split()
    res.setdefault(m, {})[k] = v
peer = {}
for line in open(sys.argv[2]):
    try: d = json.loads(line)
    except ValueError: continue
    if "batch" in d: peer[d["batch"]] = d["output_tok_s"]
bw, qb, streams = float(sys.argv[3]) * 1e9, int(sys.argv[4]), sys.argv[5].split()
hdr = ["model", "decode b=1 tok/s"] + [f"out tok/s @{n}" for n in streams]
print("\n| " + " | ".join(hdr) + " |\n|" + "---|" * len(hdr))
for m, r in res.items():
    print("| " + " | ".join([m, r.get("decode1", "-")] + [r.get("streams" + n, "-") for n in streams]) + " |")
if peer:
    print("| transformers generate (1.5B) | " + str(peer.get(1, "-")) + " | " +
          " | ".join(str(peer.get(int(n), "-")) for n in streams) + " |")
roof = bw / qb
print(f"\nHBM: measured copy bandwidth {bw/1e9:.0f} GB/s (nominal H100 SXM 3350 GB/s); 1.5B bf16 step reads {qb/1e9:.3f} GB")
print(f"roofline decode (measured bw) {roof:.0f} tok/s, (3.35 TB/s) {3.35e12/qb:.0f} tok/s")
q = res.get("qwen15b", {})
try:
    d = float(q["decode1"]); print(f"ours b=1: {d:.1f} tok/s = {100*d/roof:.1f}% of measured roofline, {100*d*qb/3.35e12:.1f}% of 3.35 TB/s")
except (KeyError, ValueError): pass
q4b = int(sys.argv[6]) if len(sys.argv) > 6 else 0
try:
    d4 = float(res["qwen15b_mlx4"]["decode1"])
    print(f"MLX 4-bit 1.5B: step reads {q4b/1e9:.3f} GB, roofline {bw/q4b:.0f} tok/s; ours b=1 {d4:.1f} tok/s = {100*d4*q4b/bw:.1f}%")
except (KeyError, ValueError, ZeroDivisionError): pass
try:
    s1, s64 = float(q["streams1"]), float(q["streams64"]); print(f"64 streams / 1 stream: {s64/s1:.2f}x")
except (KeyError, ValueError): pass
try:
    print(f"ours @32 / transformers @32: {float(q['streams32'])/float(peer[32]):.2f}x")
except (KeyError, ValueError): pass
PY
echo "logs: $LOG"
