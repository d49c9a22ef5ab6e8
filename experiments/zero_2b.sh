#!/usr/bin/env bash
# The 2B base U-Net under DeepSpeed ZeRO: train STEPS steps, resume from that checkpoint for MORE_STEPS more, sample
# from the sharded checkpoint (converted in memory; CONVERT=1 also writes a plain one) and print the run figures.
#   experiments/zero_2b.sh deepspeed_zero2 [out_dir] [hydra overrides...]
#   STEPS=300 MORE_STEPS=20 experiments/zero_2b.sh deepspeed_zero3 outputs/zero text_encoder=t5_xxl
set -euo pipefail
trainer=${1:?trainer config: deepspeed_zero2 | deepspeed_zero3 | deepspeed_zero3_offload}
out=${2:-outputs/zero_2b}
shift $(( $# >= 2 ? 2 : 1 ))
steps=${STEPS:-300}
more=${MORE_STEPS:-20}
run=$out/$trainer
common=(experiment=base_2b "trainer=$trainer")

python train.py "${common[@]}" "hydra.run.dir=$run/first" "trainer.max_steps=$steps" \
  "callbacks.model_checkpoint.every_n_train_steps=$steps" "$@"
# The resumed run writes no checkpoint of its own: one ZeRO checkpoint of the 2B model is ~36 GB.
python train.py "${common[@]}" "hydra.run.dir=$run/resumed" "trainer.max_steps=$((steps + more))" \
  "ckpt_path=$run/first/checkpoints/last.ckpt" callbacks.model_checkpoint=null trainer.enable_checkpointing=false "$@"
ckpt=$run/first/checkpoints/last.ckpt
if [[ "${CONVERT:-0}" == 1 ]]; then
  python -m imagen_lit.zero_checkpoint "$ckpt" "$run/plain.ckpt"
  ckpt=$run/plain.ckpt
fi
python sample.py "ckpt_path=$ckpt" "hydra.run.dir=$run/samples" num_images=2 progress=false
python experiments/summarize_run.py "$run/first" "$run/resumed"
