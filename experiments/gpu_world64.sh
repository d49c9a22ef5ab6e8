#!/usr/bin/env bash
# The device check of experiment=world_gpu64 (the long configuration at 64x64 on one GPU), in one call: train it
# (<= 5 min), score every 1000-step checkpoint on 200 held-out scenes (accuracy against minutes), then the last one on
# 500 held-out scenes at 64x64 with domain FID. What comes back lands in $OUT (or outputs/gpu_world64/out):
# env.txt, train.log, summary.txt (img/s, MFU, peak memory), curve.json / curve.png, eval.json, eval_grid.png.
#   here first:  python experiments/device_carry.py        # .carry/: wheels + float16 MiniLM (45 MiB), git-ignored
#   on the GPU:  run(command="experiments/gpu_world64.sh", carry=[".carry"], timeout_s=560)
#   rehearsal on a CPU (tiny, under a minute): tests/test_gpu_world64.py runs it with ENCODER_DEVICE=cpu and a tiny model
# Extra arguments go to train.py as Hydra overrides, SAMPLE_ARGS to the last sample.py. The steps after training run
# on even if one fails, so whatever was measured comes back.
set -uo pipefail
out=${OUT:-outputs/gpu_world64/out}
run=${RUN:-outputs/gpu_world64/run}
carry=${CARRY:-.carry}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if ! $py -c 'import hydra, webdataset' 2>/dev/null; then
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$carry"/whl/*.whl \
    || { echo "no wheels under $carry/whl: run python experiments/device_carry.py here first"; exit 2; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  $py -c "import torch, lightning, transformers; print('torch', torch.__version__, '| lightning', lightning.__version__,
'| transformers', transformers.__version__, '| cuda', torch.cuda.is_available())"
  echo "cpus $(nproc)"; df -h /dev/shm | tail -1
} 2>&1 | tee "$out/env.txt"

SECONDS=0
$py train.py experiment=world_gpu64 "text_encoder.name_or_path=$carry/minilm-fp16" \
  "++text_encoder.device=${ENCODER_DEVICE:-cuda}" "hydra.run.dir=$run" trainer.enable_progress_bar=false "$@" \
  > "$out/train.log" 2>&1
status=$?
tail -n 30 "$out/train.log"
echo "train.py exit $status after $SECONDS s (set-up included)" | tee -a "$out/env.txt"
[[ $status == 0 ]] || exit "$status"

$py experiments/summarize_run.py "$run" 2>&1 | tee "$out/summary.txt"
cp "$run/samples/final.png" "$out/samples_final.png" 2>/dev/null
$py experiments/learning_curve.py "$run" --num-scenes "${CURVE_SCENES:-200}" --batch-size 200 --device auto \
  --json "$out/curve.json" --png "$out/curve.png" 2>&1 | grep -v -i warn
$py sample.py "ckpt_path=$run/checkpoints/last.ckpt" evaluate=true "eval.num_images=${EVAL_SCENES:-500}" batch_size=250 \
  progress=false "hydra.run.dir=$run/eval" ${SAMPLE_ARGS:-} > "$out/eval.log" 2>&1 || tail -n 20 "$out/eval.log"
cp "$run/eval/metrics.json" "$out/eval.json" && cat "$out/eval.json"
cp "$run/eval/grid.png" "$out/eval_grid.png" 2>/dev/null
echo "all done after $SECONDS s"
