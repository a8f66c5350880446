// conv_fprop_halo on wgmma (sm_90a): kernels/conv.cu built with CONV_GMMA, so that its GM = true
// specializations (fprop and the FLIP bprop, fp16/bf16, B = 16 or 32) compile for the one target whose
// tensor-core instructions they use. Everything else of the halo kernel (items, claims, the halo and weight
// rings, the epilogue) is the same source.
#define CONV_GMMA 1
#include "conv.cu"
