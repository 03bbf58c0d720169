"""PyTorch-eager times per suite layer, ESTIMATED (never measured), for `--predict`.

What these numbers are: the "torch f16" column of the project's round-1 kernel review
(its "Torch-eager estimates per suite layer" table), copied as data. They come from an
analytic model, not from running PyTorch:
- device: H100 SXM (3.35 TB/s peak DRAM, 989 TFLOP/s dense fp16), the same device as the
  cost model's constants (sepconv_gpu/backends/cuda/cost_model.py, H100);
- dtype float16, batch 32, channels_last, the layers of benchmarks/suites.py;
- PyTorch eager = cuDNN depthwise convolution + a 1x1 convolution (cuBLAS-class GEMM) +
  bias/activation: three passes over memory where a fused kernel makes one.
A GPU run of `python -m benchmarks --device gpu` measures the real PyTorch eager times
(`torch_eager_nhwc`, `torch_eager_nchw`) and supersedes these.

TF32 has no estimate in that table. `predict.torch_eager_us` derives one: PyTorch in TF32 moves
float32 (4 bytes an element instead of 2) and runs its GEMM at the TF32 tensor rate, so
each of its memory-bound and compute-bound parts scales by the cost model's ratios
(bytes 4/2; mma_f16_flops / mma_tf32_flops, 350/175 with today's constants): the fp16
estimate times the ratio of the layer's TF32 floor to its fp16 floor in the model (both
without the launch), 2.0 for every layer with today's constants. A stated derivation, not
a measurement.
"""
from __future__ import annotations

ASSUMPTIONS = ("round-1 analytic model (not measured), H100 SXM, float16, batch 32, "
               "channels_last; TF32 = fp16 estimate x the model's TF32/fp16 floor ratio")
BATCH = 32

# suite layer key (benchmarks/suites.py) -> estimated PyTorch eager fp16 microseconds
TORCH_EAGER_F16_US = {
    "xception/147x147x64->128": 194.9,
    "xception/147x147x128->128": 316.1,
    "xception/74x74x128->256": 98.8,
    "xception/74x74x256->256": 160.3,
    "xception/37x37x256->728": 57.4,
    "xception/37x37x728->728": 146.1,
    "xception/19x19x728->728": 38.5,
    "xception/19x19x728->1024": 47.7,
    "xception/10x10x1024->1536": 24.7,
    "xception/10x10x1536->2048": 46.4,
    "mobilenet_v1/112x112x32->64": 142.2,
    "mobilenet_v1/112x112x64->128 s2": 132.7,
    "mobilenet_v1/56x56x128->128": 88.7,
    "mobilenet_v1/56x56x128->256 s2": 66.5,
    "mobilenet_v1/28x28x256->256": 44.4,
    "mobilenet_v1/28x28x256->512 s2": 33.6,
    "mobilenet_v1/14x14x512->512": 22.9,
    "mobilenet_v1/14x14x512->1024 s2": 17.9,
    "mobilenet_v1/7x7x1024->1024": 14.5,
    "mobilenet_v2/112x112x32->16": 51.2,
    "mobilenet_v2/112x112x96->24 s2": 124.7,
    "mobilenet_v2/56x56x144->24": 45.6,
    "mobilenet_v2/28x28x192->32": 15.9,
    "mobilenet_v2/14x14x384->64": 8.9,
    "mobilenet_v2/14x14x576->96": 12.4,
    "mobilenet_v2/7x7x960->160": 6.9,
    "mobilenet_v2/7x7x960->320": 6.9,
    "conformer1d/1024x256->256 k31": 58.0,
}
