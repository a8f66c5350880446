// Block-sparse fprop / bprop on wgmma with the x tile in registers (sm_90a only): column groups.
//
// Feature axis 1 (x [N, in_features], y [N, out_features]):
//     Y[:, colmap[g·C + j]] = Σ_e X[:, s_e] · op(w[k_e[j]])   over the records e of group g whose mask has bit
// j, op = identity (fprop) or transpose (bprop). Group g holds the output block columns colmap[g·C ..
// g·C + C - 1] (grouped by the reduction blocks they share, _matmul_gpu.column_order; -1: none); its records (offsets[g] .. offsets[g + 1]; int32 [s, mask, k_0 .. k_{C-1}], k = 0 where absent) are the
// reduction blocks s_e present in at least one of them, in increasing order (rs_tables in _matmul_gpu.py,
// from wide_tables). A column without blocks is written as zeros.
//
// Why (bench/NOTES.md): xw_gmma reads its A operand (the x tile) from shared memory once per block, so at
// b = 32 each block costs 12 KiB of shared-memory reads for 262 kflop, and b = 16 has no wgmma kernel at
// all. Here one CTA computes Y[n0 : n0 + 128, group] with two warpgroups (64 rows each): per entry, every
// warp loads its 16 rows of the x tile ONCE from shared memory into registers (ldmatrix: the wgmma A
// fragment of m64 × k16 is mma.sync's m16 × k16 per warp), and issues one wgmma m64nBSk16 (A from
// registers, B = the w block through a matrix descriptor) per present column and 16 of k, each into the
// column's own fp32 accumulators (C · BS / 2 registers a thread). Shared-memory reads per block fall to
// the w block plus the x tile over the present columns of the entry; the x tile is also loaded from L2
// once per entry instead of once per block.
//
// Tiles in shared memory, each stored row by row in the swizzled layout of its row width (BS · 2 bytes:
// 128 / 64 / 32 for BS = 64 / 32 / 16, see gmma::swizzle): the x tile [128][BS] (read by ldmatrix), and
// C slots [BS][BS] for the entry's w blocks as stored in memory (N-major B for fprop, K-major for bprop:
// one image, the transpose bit decides). Only present blocks are loaded. Stage pipeline as xw_gmma's:
// 16-byte cp.async by all threads, STAGES deep, iteration s waits for stage s, fences the generic-proxy
// writes for the async proxy, barriers, loads the A fragments, issues its wgmma group, refills the slot of
// stage s - 2 with stage s + STAGES - 2 and waits for group s - 1. The A fragments are double-buffered
// in registers (the loop is unrolled by two), since group s still reads its fragments while iteration
// s + 1 loads the next ones. Epilogue from registers, two consecutive features per thread.
#include "gmma.cuh"


// sm_90a only. x, w, y 16-byte aligned; in_features and out_features multiples of BS. MINB: CTAs per SM
// the register budget is set for. ALL = 1: every column's wgmmas are issued, absent blocks multiplied as
// the zeros their slots were filled with (no branch and no wgmma.fence per column; more tensor work; a
// non-finite x value then also reaches the columns whose block is absent, as 0·inf: timing only). EPS
// records per pipeline stage (one barrier, wait and proxy fence per EPS records). R: a record covers R
// consecutive reduction blocks (a super-row of R·BS features: the x tile's rows are R·BS·2 bytes, whole
// 64- or 128-byte pieces of x's rows instead of BS·2-byte ones; R·C w slots, bit rr·C + j of the mask for
// block (s·R + rr, column j)); features past in_features (a ragged last super-row) are never loaded.
template <typename T, typename TO, int BS, int C, int STAGES, int MINB, int ALL, int EPS, int R, int TRANS_W>
__global__ void __launch_bounds__(256, MINB)
xw_gmma_rs(const T* __restrict__ x, const T* __restrict__ w, TO* __restrict__ y, const int* __restrict__ offsets,
           const int* __restrict__ records, const int* __restrict__ colmap, i64 n_total, i64 in_features,
           i64 out_features, int accumulate) {
    using namespace gmma;
    static_assert(BS == 16 || BS == 32 || BS == 64, "wgmma column groups: BS = 16, 32 or 64");
    static_assert(C >= 1 && STAGES >= 3 && R >= 1, "tile; the slot of stage s - 2 is refilled at stage s");
    constexpr int THREADS = 256, BM = 128, NS = R * C;  // NS w slots a record
    constexpr int ROW = BS * 2, CPR = BS / 8;            // bytes and 16-byte chunks per w row
    constexpr int XF = R * BS, ROWX = XF * 2, CPRX = XF / 8;  // features, bytes, chunks per x-tile row
    static_assert(ROWX == 32 || ROWX == 64 || ROWX == 128, "x-tile rows of 32, 64 or 128 bytes");
    constexpr int A_BYTES = BM * ROWX, W_BYTES = BS * ROW, SUB = A_BYTES + NS * W_BYTES, STAGE = EPS * SUB;
    static_assert(EPS >= 1 && EPS * NS <= 32, "a stage's masks share one word");
    constexpr int NACC = BS / 2, KS = BS / 16;
    constexpr int XCH = BM * CPRX / THREADS;     // x-tile chunks a thread copies
    constexpr int WCH = NS * BS * CPR / THREADS;  // w chunks a thread copies
    constexpr int REC = 2 + NS;                   // ints a record: s, mask, the NS w indices
    static_assert(XCH >= 1 && (BM * CPRX) % THREADS == 0 && STAGE % 1024 == 0, "tile shape");
    static_assert(WCH >= 1 && (NS * BS * CPR) % THREADS == 0, "w chunks");
    // chunk i of a thread lies in slot (tid + i·THREADS) / (BS·CPR) = wj0 + i·WSTEP (BS·CPR ≤ THREADS), or
    // i / (BS·CPR / THREADS) alone (BS = 64): either way a constant step from the first
    constexpr int SPAN = BS * CPR;

    extern __shared__ unsigned char smem_raw[];
    const unsigned base = (smem_addr(smem_raw) + 1023u) & ~1023u;

    const int g = blockIdx.x;
    const i64 n0 = (i64)blockIdx.y * BM;
    const int begin = offsets[g], count = offsets[g + 1] - begin, stages = (count + EPS - 1) / EPS;
    const int tid = threadIdx.x, wg = tid / 128, lane = tid % 32, v = (tid % 128) / 32;

    // copy sources (byte pointers) and destinations, computed once. x chunk i of this thread is (row, j) of
    // the tile: its source without the entry's column s·BS (x itself for rows past N: those copies read
    // nothing and zero-fill). w chunk i is in slot wj(i) (uniform over a warp), offset q·8 of the block.
    auto dj = [](int i) { return SPAN <= THREADS ? i * (THREADS / SPAN) : i * THREADS / SPAN; };  // wj(i) - wj(0)
    const int wj0 = SPAN <= THREADS ? tid / SPAN : 0;
    auto wj = [&](int i) { return wj0 + dj(i); };
    unsigned xs_off[XCH], ws_off[WCH];
    const char* xp[XCH];
    const char* wp[WCH];
    int xbytes[XCH], xcol[XCH];  // xcol: the chunk's first feature in the super-row (R > 1: ragged check)
#pragma unroll
    for (int i = 0; i < XCH; i++) {
        const int ch = tid + i * THREADS, row = ch / CPRX, j = ch % CPRX;
        const i64 n = n0 + row;
        xs_off[i] = swizzle<ROWX>(row, j);
        xp[i] = reinterpret_cast<const char*>(x + (n < n_total ? n * in_features + j * 8 : 0));
        xbytes[i] = n < n_total ? 16 : 0;
        xcol[i] = j * 8;
    }
#pragma unroll
    for (int i = 0; i < WCH; i++) {
        const int q = (tid + i * THREADS) % SPAN;
        wp[i] = reinterpret_cast<const char*>(w + q * 8);
        ws_off[i] = A_BYTES + wj(i) * W_BYTES + swizzle<ROW>(q / CPR, q % CPR);
    }

    float acc[C][NACC];
#pragma unroll
    for (int j = 0; j < C; j++)
#pragma unroll
        for (int q = 0; q < NACC; q++) acc[j][q] = 0.f;

    // The records of the next stage to load (reduction block, mask, the w index of each of this thread's
    // chunks: 0 when absent) are fetched one stage ahead, so the copies never wait for a table load; each
    // stage's masks (record u's in bits u·C..) then wait in a queue of registers (q[0] = the stage consumed
    // next) until its consumer runs, STAGES - 2 stages later. Records are read in order: two pointers walk
    // them. A record past the group's end has mask 0 and loads nothing (ALL: zero-fills its x tile).
    const int* rp = records + (i64)begin * REC;  // s, mask of the next record
    const int* kp = rp + 2 + wj0;               // this thread's first w index in it (the others: + dj(i))
    int nx_s[EPS], nx_k[EPS][WCH];
    unsigned nx_m[EPS];
    auto fetch = [&](int e) {
#pragma unroll
        for (int u = 0; u < EPS; u++) {
            nx_m[u] = 0;
            if (e * EPS + u < count) {
                nx_s[u] = __ldg(rp);
                nx_m[u] = (unsigned)__ldg(rp + 1);
#pragma unroll
                for (int i = 0; i < WCH; i++) nx_k[u][i] = __ldg(kp + dj(i));
                rp += REC;
                kp += REC;
            }
        }
    };
    unsigned q[STAGES - 2];
    // copies of the fetched records into slot `slot` (absent blocks: skipped; ALL: zero-filled); pushes their
    // masks on the queue and fetches stage e + 1's
    auto load_stage = [&](int e, int slot) {
        unsigned mq = 0;
        if (e < stages) {
#pragma unroll
            for (int u = 0; u < EPS; u++) {
                const unsigned sa = base + slot * STAGE + u * SUB;
                const bool ok = EPS == 1 || e * EPS + u < count;
                if (ok || ALL) {
#pragma unroll
                    for (int i = 0; i < XCH; i++) {
                        // R > 1: a super-row past in_features (the ragged last one) is neither read nor used
                        const bool in = R == 1 || (i64)nx_s[u] * XF + xcol[i] < in_features;
                        cp_async16(sa + xs_off[i], ok && in ? xp[i] + (i64)nx_s[u] * (XF * 2) : xp[i],
                                   ok && in ? xbytes[i] : 0);
                    }
#pragma unroll
                    for (int i = 0; i < WCH; i++) {
                        const bool present = nx_m[u] >> wj(i) & 1u;
                        if (ALL)  // absent slots must hold zeros
                            cp_async16(sa + ws_off[i], wp[i] + (i64)nx_k[u][i] * (BS * BS * 2), present ? 16 : 0);
                        else if (present)  // absent slots are never read
                            cp_async16(sa + ws_off[i], wp[i] + (i64)nx_k[u][i] * (BS * BS * 2), 16);
                    }
                }
                mq |= nx_m[u] << (u * NS);
            }
        }
        cp_async_commit();
        q[STAGES - 3] = mq;
        fetch(e + 1);
    };

    // ldmatrix source of this thread: row 16·v + lane % 16 of its warpgroup's 64, 8-feature chunk lane / 16
    // (+ 2 per 16 of k): registers 0-3 = rows 0-7 / 8-15 at k 0-7, rows 0-7 / 8-15 at k 8-15
    const int a_row = wg * 64 + v * 16 + lane % 16, a_chunk = lane / 16;
    unsigned a_off[R * KS];  // fragment rr·KS + kk: features rr·BS + kk·16 of the super-row
#pragma unroll
    for (int rk = 0; rk < R * KS; rk++) a_off[rk] = swizzle<ROWX>(a_row, rk * 2 + a_chunk);
    // B descriptors: the stage's first slot's, plus constants (the address field is bits 0-13, in 16 bytes;
    // shared memory offsets stay below 2^18, so adding never carries out of it)
    const unsigned long long d0 = desc<ROW>(base + A_BYTES);
    auto step = [&](int st, unsigned (&a)[EPS][R * KS][4]) {
        const unsigned m = q[0];
#pragma unroll
        for (int i = 0; i + 1 < STAGES - 2; i++) q[i] = q[i + 1];
        cp_async_wait<STAGES - 3>();
        fence_proxy_async();
        __syncthreads();
        const unsigned so = (st % STAGES) * STAGE, sa = base + so;
#pragma unroll
        for (int u = 0; u < EPS; u++)
#pragma unroll
            for (int rk = 0; rk < R * KS; rk++) ldmatrix_x4(a[u][rk], sa + u * SUB + a_off[rk]);
        wgmma_fence();
        const unsigned long long ds = d0 + (so >> 4);
#pragma unroll
        for (int u = 0; u < EPS; u++)
#pragma unroll
            for (int rr = 0; rr < R; rr++)
#pragma unroll
                for (int j = 0; j < C; j++) {
                    const int sl = rr * C + j;  // the w slot of block (s·R + rr, column j)
                    if (!ALL && !(m >> (u * NS + sl) & 1u)) continue;
#pragma unroll
                    for (int kk = 0; kk < KS; kk++) {
                        // fprop: B rows are k (N-major), 16 rows a step; bprop: rows are n (K-major), 32 bytes
                        const unsigned long long db =
                            ds + ((u * SUB + sl * W_BYTES + (TRANS_W ? kk * 32 : kk * 16 * ROW)) >> 4);
                        GmmaRS<T, BS, TRANS_W ? 0 : 1>::run(acc[j], a[u][rr * KS + kk], db);
                    }
                }
        wgmma_commit();
        const int next = st + STAGES - 2;
        load_stage(next, next % STAGES);
        wgmma_wait<1>();
    };

    fetch(0);
#pragma unroll
    for (int s = 0; s < STAGES - 2; s++) {
        load_stage(s, s);
#pragma unroll
        for (int i = 0; i + 1 < STAGES - 2 && s + 1 < STAGES - 2; i++) q[i] = q[i + 1];
    }
    unsigned a0[EPS][R * KS][4], a1[EPS][R * KS][4];
    int st = 0;
    for (; st + 1 < stages; st += 2) {
        step(st, a0);
        step(st + 1, a1);
    }
    if (st < stages) step(st, a0);
    wgmma_wait<0>();
    cp_async_wait<0>();
#pragma unroll
    for (int j = 0; j < C; j++)
#pragma unroll
        for (int q = 0; q < NACC; q++) fence_operand(acc[j][q]);

    // accumulator fragment: warp v of the warpgroup holds rows 16v + lane/4 (+8), and for each 8 features
    // q, features 8q + 2·(lane % 4) (+1)
#pragma unroll
    for (int j = 0; j < C; j++) {
        const int c = __ldg(colmap + g * C + j);  // the group's column j (-1: none, in a last group)
        if (c < 0) continue;
        TO* yc = y + c * BS + (lane % 4) * 2;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const i64 n = n0 + wg * 64 + v * 16 + lane / 4 + h * 8;
            if (n >= n_total) continue;
            TO* yr = yc + n * out_features;
#pragma unroll
            for (int q = 0; q < BS / 8; q++)
                Pair<TO>::store(yr + q * 8, acc[j][q * 4 + h * 2], acc[j][q * 4 + h * 2 + 1], accumulate);
        }
    }
}

