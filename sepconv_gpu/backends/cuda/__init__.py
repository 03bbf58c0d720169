"""The CUDA family: `cuda_backend` (CupyOps: CuPy arrays, the caller's stream, prepared
weights, loaded kernels), `launch` (kernel choice, launch sequence, weight layouts, the
launch loop), `simt` and `tc` (the two kernel templates' plans, with
kernels/sepconv_simt.cu and kernels/sepconv_tc.cu), `kernel_common` (dtypes, fused
activations), `kernel_cache` and `nvrtc` (the build side), `autotune` and `cost_model`
(plan choice). Importing this package needs no CuPy; `cuda_backend` does."""
