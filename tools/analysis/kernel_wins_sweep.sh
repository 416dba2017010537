#!/bin/bash
# Fill one fresh kernel-choice cache per setting (2 threads, 1 thread, 2 threads capped
# to AVX2) by running every backbone's config benchmark, then count the winners:
#     tools/analysis/kernel_wins_sweep.sh [OUT_DIR]     (about 10 minutes on 2 cores)
set -e
cd "$(dirname "$0")/../.."
OUT=${1:-work_dirs/kernel_wins}
PY=${PYTHON:-.venv/bin/python}
B="$PY tools/analysis/benchmark_latency.py"
for setting in t2 t1 t2-avx2; do
  export MMDYN_KERNEL_CACHE=$OUT/$setting
  rm -rf "$MMDYN_KERNEL_CACHE"; mkdir -p "$MMDYN_KERNEL_CACHE"
  unset ATEN_CPU_CAPABILITY ONEDNN_MAX_CPU_ISA MKL_ENABLE_INSTRUCTIONS
  T=2
  [ $setting = t1 ] && T=1
  [ $setting = t2-avx2 ] && export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 \
    MKL_ENABLE_INSTRUCTIONS=AVX2
  R="--rates 0.3 0.7 --threads $T --warmup 1 --repeats 1 --out $OUT/last.json"
  $B configs/las_resnet/faster-rcnn_las-r101-s4471-t05_fpn_1x_coco.py \
    --cfg-options 'model.backbone.granularity=[8,4,7,1]' --input 800 1216 $R
  $B configs/las_resnet/faster-rcnn_las-r101-s4421-t05_fpn_1x_coco.py --input 800 1216 $R
  $B configs/sar_resnet/faster-rcnn_sar-r50-g2s2a2b1-t05_fpn_1x_coco.py --input 800 1216 $R
  $B configs/sar_resnet/faster-rcnn_sar-r50-g2s2a2b1-t05_fpn_1x_coco.py --input 224 224 $R
  $B configs/cad_resnet/deeplabv3_cad-r101-d8-edge035-os16to8_4xb2-80k_cityscapes-512x1024.py \
    --input 512 1024 $R
  $B configs/sfsi_resnet/faster-rcnn_sfsi-r101-dcn-w01_fpn_1x_coco.py --input 800 1216 $R \
    --cfg-options model.backbone.dcn=None 'model.backbone.stage_with_dcn=(False,False,False,False)'
done
unset MMDYN_KERNEL_CACHE ATEN_CPU_CAPABILITY ONEDNN_MAX_CPU_ISA MKL_ENABLE_INSTRUCTIONS
$PY tools/analysis/kernel_wins.py "$OUT/t2" "$OUT/t1" "$OUT/t2-avx2" --out "$OUT/wins.json"
