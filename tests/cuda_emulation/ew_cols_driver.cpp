// Launches kernels/ew_cols.cu on the CPU (tests only): a shared library that tests/test_ops_cols.py loads
// with ctypes. The test writes ew_cols_emu.cu: kernels/ew_cols.cu with its PTX wrappers removed and its
// shared variables made per-block (emu_smem), compiled here against ew_cols_emu.h. Arguments as
// cusparseblocks/_ops_cols.py passes them; `bf16` picks __nv_bfloat16 (else float); CS: the cluster size.
#include "ew_cols_emu.h"
#include "ew_cols_emu.cu"

#define CS_SWITCH(CALL)                                    \
  switch (cs) {                                            \
    case 1: { constexpr int CSV = 1; CALL; break; }        \
    case 2: { constexpr int CSV = 2; CALL; break; }        \
    case 4: { constexpr int CSV = 4; CALL; break; }        \
    case 8: { constexpr int CSV = 8; CALL; break; }        \
    case 16: { constexpr int CSV = 16; CALL; break; }      \
    default: emu_fail("cluster size");                     \
  }

template <typename T>
static void fwd(int cs, int grid, size_t smem, void* y, const void* x, const void* gain, const void* bias, float* mean,
                float* rstd, float* rm, float* rv, int R, i64 C, int rows, int vpr, float eps, float mom, float vs,
                int per_col, int tiles, int groups, float* gpart, int* gcnt) {
  emu_launch(grid, cs, THREADS, smem, [=] {
    if (groups > 1)
      CS_SWITCH((cols_fwd<T, CSV, true>((T*)y, (const T*)x, (const T*)gain, (const T*)bias, mean, rstd, rm, rv, R, C,
                                        rows, vpr, eps, mom, vs, per_col, tiles, groups, gpart, gcnt)))
    else
      CS_SWITCH((cols_fwd<T, CSV, false>((T*)y, (const T*)x, (const T*)gain, (const T*)bias, mean, rstd, rm, rv, R, C,
                                         rows, vpr, eps, mom, vs, per_col, tiles, groups, gpart, gcnt)))
  }, groups > 1);
}
template <typename T>
static void bwd(int cs, int grid, size_t smem, void* dx, void* s0, void* s1, float* ws, const void* dy, const void* x,
                const void* gain, const float* mean, const float* rstd, int R, i64 C, int rows, int vpr, int per_col,
                int train, int tiles) {
  emu_launch(grid, cs, THREADS, smem, [=] {
    CS_SWITCH((cols_bwd<T, CSV>((T*)dx, (T*)s0, (T*)s1, ws, (const T*)dy, (const T*)x, (const T*)gain, mean, rstd, R, C,
                                rows, vpr, per_col, train, tiles)));
  });
}
template <typename T, bool LN, int VPR, bool GR>
static void bwd_rx(int cs, int grid, size_t smem, void* dx, void* s0, void* s1, float* ws, const void* dy,
                   const void* x, const void* gain, const float* mean, const float* rstd, int R, i64 C, int rows,
                   int per_col, int train, int tiles, int groups, float* gpart, int* gcnt) {
  emu_launch(grid, cs, THREADS, smem, [=] {
    CS_SWITCH((cols_bwd_rx<T, CSV, LN, VPR, GR>((T*)dx, (T*)s0, (T*)s1, ws, (const T*)dy, (const T*)x,
                                                (const T*)gain, mean, rstd, R, C, rows, per_col, train, tiles,
                                                groups, gpart, gcnt)));
  }, groups > 1);
}
template <typename T, bool LN>
static void bwd_rx_vpr(int vpr, int gr, int cs, int grid, size_t smem, void* dx, void* s0, void* s1, float* ws,
                       const void* dy, const void* x, const void* gain, const float* mean, const float* rstd, int R,
                       i64 C, int rows, int per_col, int train, int tiles, int groups, float* gpart, int* gcnt) {
  if (gr && vpr != 8) emu_fail("column groups with rows narrower than 8 vectors");
  auto fn = gr ? bwd_rx<T, LN, 8, true>
               : vpr == 8 ? bwd_rx<T, LN, 8, false> : vpr == 4 ? bwd_rx<T, LN, 4, false> : bwd_rx<T, LN, 2, false>;
  fn(cs, grid, smem, dx, s0, s1, ws, dy, x, gain, mean, rstd, R, C, rows, per_col, train, tiles, groups, gpart, gcnt);
}
template <typename T>
static void wn(int cs, int grid, size_t smem, void* out, float* rnorm, void* dgain, const void* w, const void* dv,
               const void* gain, const int* col_ptr, const int* col_order, int lg_b, int lg_vpr, int bpc, float eps) {
  emu_launch(grid, cs, THREADS, smem, [=] {
    CS_SWITCH((wn_unit<T, CSV>((T*)out, rnorm, (T*)dgain, (const T*)w, (const T*)dv, (const T*)gain, col_ptr,
                               col_order, lg_b, lg_vpr, bpc, eps)));
  });
}

template <typename T>
static void keep_fwd(int grid, size_t smem, void* y, const void* x, const void* gain, const void* bias, float* mean,
                     float* rstd, float* rm, float* rv, int R, i64 C, int rows, int keep, float eps, float mom, float vs,
                     int per_col, int bpt, float* gpart, int* gcnt) {
  emu_launch(grid, 1, THREADS, smem, [=] {
    cols_keep_fwd<T>((T*)y, (const T*)x, (const T*)gain, (const T*)bias, mean, rstd, rm, rv, R, C, rows, keep, eps, mom,
                     vs, per_col, bpt, gpart, gcnt);
  }, true);
}
template <typename T, bool LN>
static void keep_bwd(int grid, size_t smem, void* dx, void* s0, void* s1, float* ws, const void* dy, const void* x,
                     const void* gain, const float* mean, const float* rstd, int R, i64 C, int rows, int keep,
                     int per_col, int train, int bpt, float* gpart, int* gcnt) {
  emu_launch(grid, 1, THREADS, smem, [=] {
    cols_keep_bwd<T, LN>((T*)dx, (T*)s0, (T*)s1, ws, (const T*)dy, (const T*)x, (const T*)gain, mean, rstd, R, C, rows,
                         keep, per_col, train, bpt, gpart, gcnt);
  }, true);
}

extern "C" {
// the tall-array kernels: every block at once (they wait for each other); ln: the backward's template flag
void emu_cols_keep_fwd(int bf16, int grid, size_t smem, void* y, const void* x, const void* gain, const void* bias,
                       float* mean, float* rstd, float* rm, float* rv, int R, i64 C, int rows, int keep, float eps,
                       float mom, float vs, int per_col, int bpt, float* gpart, int* gcnt) {
  (bf16 ? keep_fwd<__nv_bfloat16> : keep_fwd<float>)(grid, smem, y, x, gain, bias, mean, rstd, rm, rv, R, C, rows, keep,
                                                     eps, mom, vs, per_col, bpt, gpart, gcnt);
}
void emu_cols_keep_bwd(int bf16, int grid, size_t smem, void* dx, void* s0, void* s1, float* ws, const void* dy,
                       const void* x, const void* gain, const float* mean, const float* rstd, int R, i64 C, int rows,
                       int keep, int per_col, int train, int bpt, float* gpart, int* gcnt, int ln) {
  auto fn = bf16 ? (ln ? keep_bwd<__nv_bfloat16, true> : keep_bwd<__nv_bfloat16, false>)
                 : (ln ? keep_bwd<float, true> : keep_bwd<float, false>);
  fn(grid, smem, dx, s0, s1, ws, dy, x, gain, mean, rstd, R, C, rows, keep, per_col, train, bpt, gpart, gcnt);
}

void emu_cols_fwd(int bf16, int cs, int grid, size_t smem, void* y, const void* x, const void* gain, const void* bias,
                  float* mean, float* rstd, float* rm, float* rv, int R, i64 C, int rows, int vpr, float eps, float mom,
                  float vs, int per_col, int tiles, int groups, float* gpart, int* gcnt) {
  (bf16 ? fwd<__nv_bfloat16> : fwd<float>)(cs, grid, smem, y, x, gain, bias, mean, rstd, rm, rv, R, C, rows, vpr, eps,
                                           mom, vs, per_col, tiles, groups, gpart, gcnt);
}
void emu_cols_bwd(int bf16, int cs, int grid, size_t smem, void* dx, void* s0, void* s1, float* ws, const void* dy,
                  const void* x,
                  const void* gain, const float* mean, const float* rstd, int R, i64 C, int rows, int vpr, int per_col,
                  int train, int tiles) {
  (bf16 ? bwd<__nv_bfloat16> : bwd<float>)(cs, grid, smem, dx, s0, s1, ws, dy, x, gain, mean, rstd, R, C, rows, vpr,
                                           per_col, train, tiles);
}
void emu_cols_bwd_rx(int bf16, int cs, int grid, size_t smem, void* dx, void* s0, void* s1, float* ws, const void* dy,
                     const void* x, const void* gain, const float* mean, const float* rstd, int R, i64 C, int rows,
                     int per_col, int train, int tiles, int groups, float* gpart, int* gcnt, int vpr, int gr) {
  // LN (layer norm: row sums) exactly when there is no gain per column (_ops_cols.cols_bwd's rule); vpr, gr: the
  // template's row width and column-groups flag (the launch's extra template arguments)
  auto fn = bf16 ? (per_col ? bwd_rx_vpr<__nv_bfloat16, false> : bwd_rx_vpr<__nv_bfloat16, true>)
                 : (per_col ? bwd_rx_vpr<float, false> : bwd_rx_vpr<float, true>);
  fn(vpr, gr, cs, grid, smem, dx, s0, s1, ws, dy, x, gain, mean, rstd, R, C, rows, per_col, train, tiles, groups,
     gpart, gcnt);
}
void emu_wn_unit(int bf16, int cs, int grid, size_t smem, void* out, float* rnorm, void* dgain, const void* w,
                 const void* dv, const void* gain, const int* col_ptr, const int* col_order, int lg_b, int lg_vpr,
                 int bpc, float eps) {
  (bf16 ? wn<__nv_bfloat16> : wn<float>)(cs, grid, smem, out, rnorm, dgain, w, dv, gain, col_ptr, col_order, lg_b,
                                         lg_vpr, bpc, eps);
}
}
