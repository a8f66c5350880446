// Block-sparse fprop / bprop on wgmma fed by TMA from a producer warp (sm_90a only).
//
// Feature axis 1 (x [N, in_features], y [N, out_features]), op = identity (fprop) or transpose (bprop):
//     Y[:, c] = Σ_{blocks (s, c)} X[:, s] · op(w[k]).
// A CTA computes Y[t·BM : t·BM + BM] for a group of C·CL output block columns, colmap[g·C·CL ..] (columns
// grouped by the reduction blocks they share, _matmul_gpu.column_order; -1: no column; a column without
// blocks is written as zeros), walking the records of rs_tables for that group (s, a mask with bit j when
// column j of the group has block s, the w index of each; in increasing s). Per record the x tile
// X[t·BM .., s·BS ..] is copied once and shared by the present blocks of the CTA's C columns (C > 1: one wgmma
// group per present column, A = the x tile from shared memory, or from registers with RS = 1), each present
// w block copied into its own slot.
// Forced-only (measured slower, bench/NOTES.md): clusters of CL CTAs (one column each) that walk the union of
// their columns' records together, the x tile multicast by the lowest CTA of the mask into every CTA of the
// mask; clusters of RM row tiles that multicast the w blocks (below).
//
// Why (bench/NOTES.md): xw_gmma's cp.async copies cost every thread ~30 instructions a stage plus a CTA
// barrier, and its x tile is read from L2 once per block, which kept b = 64 L2-bound near 0.44× dense.
// Here one warp issues a stage's few copies; the consumers wait on mbarriers only.
//
// Threads: warpgroups 0 and 1 consume (warpgroup g owns rows g·MI·64 .. +MI·64: MI wgmma m64nBSk16 per 16
// of k, A = the x tile, B = the w block, both from shared memory through descriptors, fp32 accumulators in
// registers); warpgroup 2 produces (warps 8 .. 8 + NP - 1) and, at one or two CTAs an SM, hands its registers
// to the consumers (setmaxnreg). STAGES slots of [BM][BS] x + [BS][BS] w in the swizzled layouts of
// BS·2-byte rows (TMA's 128B / 64B / 32B swizzle = gmma::swizzle), full[s] (the producer's arrival with the
// slot's bytes) and empty[s] (one arrival per consumer warp of every CTA of the cluster: a CTA refills a
// slot, and multicasts into the others' same slot, only when all of them have finished reading it).
// Consumers keep one wgmma group in flight: a slot is released once the next group is issued and the
// previous one waited for; an entry whose block is absent in this CTA is released at once.
#include "gmma.cuh"
#include "tma.cuh"

// sm_90a only. tx: x as [N, in_features], box [BM rows, BS features]; tw: w as [nnz·BS, BS], box [BS / RM,
// BS]; both with the swizzle of BS·2-byte rows. RM > 1 (CL = 1): clusters of RM row tiles of one column
// (same records) split each w block into RM pieces of BS / RM rows, each CTA multicasting its piece to all:
// w is read from L2 once per cluster instead of once per CTA (grid.y a multiple of RM; row tiles past N load
// zeros and store nothing). y 16-byte aligned, out_features a multiple of BS, N < 2^31.
// PERS = 1 (CL = RM = 1): a persistent grid of the CTAs the GPU holds at once; CTA b takes the tiles
// t = b, b + gridDim.x, ... (t = (row tile)·n_cols + column group) and streams their stages back to back, so
// the next tile's first stages load while the consumers store the last one (no per-tile pipeline fill, no
// waves).
//
// Producer and consumers walk the same stage sequence, each from the tables (a tile's records, or one stage
// that loads nothing for an empty column group): nothing but the tiles passes between them, so every shared-
// memory write they synchronize on an mbarrier is a copy's (records passed through shared memory were generic
// stores that compute-sanitizer's racecheck cannot pair with the mbarrier wait, and st.async needs a cluster).
template <typename T, typename TO, int BS, int C, int CL, int RM, int MI, int STAGES, int MINB, int PERS, int RS,
          int TRANS_W, int TT = 0, int NP = 1>
__global__ void __cluster_dims__(CL, RM, 1) __launch_bounds__(384, MINB)
xw_tma(const __grid_constant__ TensorMap tx, const __grid_constant__ TensorMap tw, TO* __restrict__ y,
       const int* __restrict__ offsets, const int* __restrict__ records, const int* __restrict__ colmap,
       i64 n_total, i64 out_features,
       int accumulate, int n_cols, int n_tiles) {
    using namespace gmma;
    static_assert(BS == 16 || BS == 32 || BS == 64, "BS = 16, 32 or 64");
    static_assert(CL >= 1 && RM >= 1 && CL * RM <= 8 && (CL == 1 || RM == 1), "clusters of columns or of rows");
    static_assert(STAGES >= 2 && (MI == 1 || MI == 2) && BS % (8 * RM) == 0, "tile");
    static_assert(PERS == 0 || CL * RM == 1, "the persistent grid has no clusters");
    static_assert(C >= 1 && C <= 16 && (C == 1 || CL * RM == 1), "column groups in a CTA or across a cluster");
    static_assert(!TT || (BS * C == 128 && BS >= 32 && MI == 2 && CL * RM == 1 && !RS),
                  "the transposed tile: 2 × 256, b = 64 (2 columns) or 32 (4 columns)");
    // NP producer warps take the stages in turn (stage q: warp 8 + q % NP), so each slot has one producer and
    // its uses stay in order
    static_assert(NP >= 1 && NP <= 4 && STAGES % NP == 0, "producer warps: 1 to 4, dividing the stages");
    constexpr int CS = CL * RM;  // CTAs a cluster
    constexpr int BM = 2 * MI * 64, ROW = BS * 2, A_BYTES = BM * ROW, W_BYTES = BS * ROW;
    constexpr int STAGE = (A_BYTES + C * W_BYTES + 1023) / 1024 * 1024;
    constexpr int NACC = BS / 2, KS = BS / 16, GW = C * CL, REC = 2 + GW;  // GW columns a record
    // the transposed tile: PAIR = 64 / BS columns a consumer warpgroup (its m64), PMASK their mask bits
    constexpr int PAIR = TT ? 64 / BS : 1, PMASK = (1 << PAIR) - 1;
    // registers a thread: the cap at entry (warps allocated in pairs: 24 a CTA), then (MINB <= 2) the producer
    // warpgroup gives most of its share to the two consumer warpgroups
    constexpr int ENTRY_REGS = 65536 / (MINB * 384) / 8 * 8, PRODUCER_REGS = 32;
    constexpr int CONSUMER_REGS = (ENTRY_REGS + (ENTRY_REGS - PRODUCER_REGS) / 2) / 8 * 8 > 240
                                      ? 240 : (ENTRY_REGS + (ENTRY_REGS - PRODUCER_REGS) / 2) / 8 * 8;

    extern __shared__ unsigned char smem_raw[];
    __shared__ __align__(8) unsigned long long bars[2 * STAGES];
    const unsigned base = (smem_addr(smem_raw) + 1023u) & ~1023u;  // the same offset in every CTA
    const unsigned full0 = smem_addr(bars), empty0 = full0 + STAGES * 8;

    const unsigned crank = CS > 1 ? tma::cluster_rank() : 0u;
    const unsigned rank = CL > 1 ? crank : 0u;  // column rank (RM > 1: the rank is the row tile's)
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    // this CTA's tile count (computed after each role's setmaxnreg: held across it, ptxas spilled it)
    auto tiles_mine = [&]() { return PERS ? (n_tiles - (int)blockIdx.x + (int)gridDim.x - 1) / (int)gridDim.x : 1; };
    // tile k of this CTA: its column group g and row tile rt
    auto tile = [&](int k, int& g, int& rt) {
        if (PERS) {
            const int t = (int)blockIdx.x + k * (int)gridDim.x;
            g = t % n_cols;
            rt = t / n_cols;
        } else {
            g = blockIdx.x / CL;
            rt = blockIdx.y;
        }
    };

    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; s++) {
            tma::bar_init(full0 + s * 8, 1);
            tma::bar_init(empty0 + s * 8, 8 * CS);
        }
        tma::bar_init_fence();
    }
    if (CS > 1)
        tma::cluster_sync();
    else
        __syncthreads();

    // lane 0's value in every lane: warp-uniform to ptxas too (a branch on a value it cannot prove uniform, such
    // as a shuffle from a variable lane, makes it serialize the wgmmas: C7514)
    auto uniform = [&](int v) { return __shfl_sync(0xffffffffu, v, 0); };
    // The consumers read the records' masks a batch of 32 at a time, the next batch loaded while this one is
    // used: lane l holds the mask of record e + l (mp: the first record's mask), 0 past the tile's count
    auto mask_batch = [&](const int* mp, int e, int count) {
        return e + lane < count ? __ldg(mp + (i64)(e + lane) * REC) : 0;
    };
    // The consumers' pipeline steps (both consumer layouts below). One arrival a warp on slot s's empty barrier
    // of every CTA of the cluster (lane r: CTA r).
    auto release = [&](int s) {
        __syncwarp();
        if (CS == 1) {
            if (lane == 0) tma::arrive(empty0 + s * 8);
        } else if (lane < CS) {
            tma::arrive_remote(empty0 + s * 8, lane);
        }
    };
    // Stage q: first free the slot of the group in flight (pend) if the producer needs it next (or `drain`),
    // then wait for the slot's copies; false (slot released) when nothing in it is this warp's.
    auto enter = [&](int q, int& pend, bool mine, bool drain) {
        if (pend >= 0 && (q - pend >= STAGES - 1 || drain)) {
            wgmma_wait<0>();
            release(pend % STAGES);
            pend = -1;
        }
        tma::wait(full0 + (q % STAGES) * 8, (q / STAGES) & 1);
        if (!mine) release(q % STAGES);
        return mine;
    };
    // after stage q's wgmmas: keep this group in flight, release the previous group's slot
    auto leave = [&](int q, int& pend) {
        wgmma_commit();
        wgmma_wait<1>();
        if (pend >= 0) release(pend % STAGES);
        pend = q;
    };
    // a tile's end: the producer's one stage for an empty group (nothing to read), then drain
    auto tile_end = [&](int& q, int& pend, int count) {
        if (count == 0) {
            tma::wait(full0 + (q % STAGES) * 8, (q / STAGES) & 1);
            release(q % STAGES);
            q++;
        }
        wgmma_wait<0>();
        if (pend >= 0) release(pend % STAGES);
        pend = -1;
    };

    if (warp >= 8) {  // the producer warpgroup: warps 8 .. 8 + NP - 1 issue everything
        if (MINB <= 2) tma::setmaxnreg_dec<PRODUCER_REGS>();
        if (warp < 8 + NP) {
            // Each producer warp walks all the records and issues every NP-th stage (one warp's issue, ~190
            // instructions a record with its dependent R2UR / shuffles, was what the consumers waited for:
            // bench/NOTES.md). The whole warp walks the records, so that no record waits on a load: lane l holds
            // (s, mask) of record e0 + l of each batch of 32 (one load a batch, not two dependent loads a
            // record), and lane j < GW loads the w index of column j's block. Lane 0 arrives on the full
            // barriers and copies x; lane j copies column j's block (C > 1), lane 0 the CTA's (C = 1).
            const int pw = warp - 8;
            if (lane == 0 && pw == 0) {
                tma::prefetch_map(tx);
                tma::prefetch_map(tw);
            }
            int q = 0;  // stages issued
            for (int k = 0, n_mine = tiles_mine(); k < n_mine; k++) {
                int g, rt;
                tile(k, g, rt);
                const int n0 = rt * BM;
                const int begin = __ldg(offsets + g), count = __ldg(offsets + g + 1) - begin;
                const int* rec = records + (i64)begin * REC;
                int b_red = 0, b_mask = 0;
                for (int e = 0; e < max(count, 1); e++, q++) {  // an empty group: one stage that loads nothing
                    const int s = q % STAGES, u = q / STAGES;
                    if (e % 32 == 0) {
                        const bool ok = e + lane < count;
                        b_red = ok ? __ldg(rec + (i64)(e + lane) * REC) : 0;
                        b_mask = ok ? __ldg(rec + (i64)(e + lane) * REC + 1) : 0;
                    }
                    if (NP > 1 && q % NP != pw) continue;  // another producer warp's stage
                    // column `lane`'s w index in record e (its load's latency passes in the slot's wait)
                    const int w_mine = lane < GW && e < count ? __ldg(rec + (i64)e * REC + 2 + lane) : 0;
                    const int red = __shfl_sync(0xffffffffu, b_red, e % 32);
                    const int mask = __shfl_sync(0xffffffffu, b_mask, e % 32);
                    const int kw = __shfl_sync(0xffffffffu, w_mine, rank);  // C = 1: the CTA's column
                    int mine = C > 1 ? mask : (mask >> rank) & 1;  // this CTA's present blocks
                    if (TT && PAIR == 2) {  // both slots of a warpgroup's pair (an absent block: OOB zeros)
                        const int p = (mine | (mine >> 1)) & 0x55555555;
                        mine = p | (p << 1);
                    }
                    // the slot's previous use released by every consumer warp of the cluster
                    if (u > 0) tma::wait(empty0 + s * 8, (u - 1) & 1);
                    const unsigned sa = base + s * STAGE, full = full0 + s * 8;
                    if (!mine) {
                        if (lane == 0) tma::arrive(full);
                        continue;
                    }
                    if (lane == 0) tma::arrive_expect(full, A_BYTES + __popc(mine) * W_BYTES);
                    __syncwarp();
                    if (C > 1) {
                        // (TT, b = 32: an absent block of a loaded pair has the index nnz in the records
                        // (rs_tables' absent), rows past the map's end: the copy writes zeros)
                        if (lane < C && ((mine >> lane) & 1))
                            tma::load_2d(sa + A_BYTES + lane * W_BYTES, tw, 0, w_mine * BS, full);
                    } else if (lane == 0) {
                        if (RM > 1) {  // piece crank (BS / RM rows) of the w block into every CTA of the cluster
                            constexpr int PR = BS / RM;
                            tma::load_2d_multicast(sa + A_BYTES + crank * PR * ROW, tw, 0, kw * BS + crank * PR, full,
                                                   (unsigned short)((1 << RM) - 1));
                        } else {
                            tma::load_2d(sa + A_BYTES, tw, 0, kw * BS, full);
                        }
                    }
                    if (lane == 0 && (CL == 1 || (mask & ((1 << rank) - 1)) == 0)) {  // the mask's lowest CTA copies x
                        if (CL > 1 && (mask & (mask - 1)))
                            tma::load_2d_multicast(sa, tx, red * BS, n0, full, (unsigned short)mask);
                        else
                            tma::load_2d(sa, tx, red * BS, n0, full);
                    }
                    __syncwarp();
                }
            }
        }
        __syncwarp();
    } else if constexpr (TT) {  // consumers of the transposed tile: warpgroup wg owns columns wg·PAIR .. + PAIR
        if (MINB <= 2) tma::setmaxnreg_inc<CONSUMER_REGS>();
        const int wg = warp / 4, v = warp % 4;
        // D[64 output features × 256 rows] = op(w)ᵀ · X_tileᵀ: one m64n256k16 per 16 of k with A = the w block
        // (fprop: M-major, its rows are k; bprop: K-major) and B = the whole x tile (K-major, 256 rows): the x
        // tile is read once per 16 of k and column instead of once per 64 rows, and the w block once per 256
        // rows (the other layout's m64n64 wgmmas read 4 KiB of shared memory for 32 clocks of tensor work, as
        // much as the shared memory delivers; these read 10 KiB for 128). b = 32: A's 64 rows are the blocks of
        // the warpgroup's two columns, in adjacent slots (K-major: rows 32.. of A are the next slot, 32 rows of
        // 64 bytes further; M-major: the second 32-feature swizzle atom, LBO = one slot further); a block absent
        // from a record whose partner is present was copied as zeros, so its rows of D add nothing
        float acc[128];
#pragma unroll
        for (int r = 0; r < 128; r++) acc[r] = 0.f;
        int q = 0, pend = -1;
        for (int k = 0, n_mine = tiles_mine(); k < n_mine; k++) {
            int g, rt;
            tile(k, g, rt);
            const int begin = __ldg(offsets + g);
            const int count = __shfl_sync(0xffffffffu, __ldg(offsets + g + 1) - begin, 0);
            const int* mp = records + (i64)begin * REC + 1;
            int m_cur = mask_batch(mp, 0, count), m_next = mask_batch(mp, 32, count);
            for (int e = 0; e < count; e++, q++) {
                if (e % 32 == 0 && e > 0) {
                    m_cur = m_next;
                    m_next = mask_batch(mp, e + 32, count);
                }
                const int mine = (uniform(__shfl_sync(0xffffffffu, m_cur, e % 32)) >> (wg * PAIR)) & PMASK;
                if (!enter(q, pend, mine != 0, false)) continue;
                const unsigned sa = base + (q % STAGES) * STAGE, sb = sa + A_BYTES + wg * PAIR * W_BYTES;
                wgmma_fence();
#pragma unroll
                for (int kk = 0; kk < KS; kk++)
                    Gmma<T, 256, TRANS_W ? 0 : 1, 0>::run(
                        acc, TRANS_W ? desc<ROW>(sb + kk * 32) : desc_lbo<ROW, W_BYTES>(sb + kk * 16 * ROW),
                        desc<ROW>(sa + kk * 32));
                leave(q, pend);
            }
            tile_end(q, pend, count);
#pragma unroll
            for (int r = 0; r < 128; r++) fence_operand(acc[r]);
            // acc[4r + 2h + e] = D[feature 16v + lane/4 + 8h][row 8r + 2·(lane % 4) + e] (feature f of the
            // warpgroup's 64: column wg·PAIR + f / BS). Lanes l and l ^ 4 hold features f and f ^ 1 of the same
            // rows: the even-f lane takes the pair (f, f + 1) of row 2j, the odd one (f - 1, f) of row 2j + 1, one
            // shuffle a pair; each store is 2 consecutive features of a row
            const int c = __shfl_sync(0xffffffffu, __ldg(colmap + g * GW + wg * PAIR + 16 * v / BS), 0);
            if (c >= 0) {
                const bool odd = (lane >> 2) & 1;
                TO* yc = y + (i64)c * BS + 16 * v % BS + (lane >> 2) - odd;
#pragma unroll
                for (int r = 0; r < 32; r++)
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        const float a0 = acc[4 * r + 2 * h], a1 = acc[4 * r + 2 * h + 1];
                        const float other = __shfl_xor_sync(0xffffffffu, odd ? a0 : a1, 4);
                        const i64 n = (i64)rt * BM + 8 * r + 2 * (lane % 4) + odd;
                        if (n < n_total)
                            Pair<TO>::store(yc + n * out_features + 8 * h, odd ? other : a0, odd ? a1 : other,
                                            accumulate);
                    }
            }
#pragma unroll
            for (int r = 0; r < 128; r++) acc[r] = 0.f;
        }
    } else {  // consumers
        if (MINB <= 2) tma::setmaxnreg_inc<CONSUMER_REGS>();
        const int wg = warp / 4;
        float acc[C][MI][NACC];
        auto zero = [&]() {
#pragma unroll
            for (int j = 0; j < C; j++)
#pragma unroll
                for (int i = 0; i < MI; i++)
#pragma unroll
                    for (int r = 0; r < NACC; r++) acc[j][i][r] = 0.f;
        };
        zero();
        // RS: this warp's ldmatrix source for fragment (i, kk): row (wg·MI + i)·64 + 16v + lane % 16 of the x tile,
        // 8-feature chunk 2·kk + lane / 16 (registers 0-3: rows 0-7 / 8-15 at k 0-7, then at k 8-15). One set of
        // fragments, loaded once the previous group has drained (with a second set, to keep a group in flight
        // while the next stage loads, ptxas serialized the wgmmas: C7514)
        unsigned a_off[MI][KS], a[MI][KS][4];
#pragma unroll
        for (int i = 0; i < MI; i++)
#pragma unroll
            for (int kk = 0; kk < KS; kk++)
                a_off[i][kk] = swizzle<ROW>((wg * MI + i) * 64 + (warp % 4) * 16 + lane % 16, kk * 2 + lane / 16);
        int q = 0, pend = -1;  // the stage whose wgmma group may still read its slot
        for (int k = 0, n_mine = tiles_mine(); k < n_mine; k++) {
            int g, rt;
            tile(k, g, rt);
            const int c0 = g * GW + rank * C;  // the CTA's first column position (colmap: its output column)
            const int begin = __ldg(offsets + g);
            // uniform to the compiler too (a branch on a value it cannot prove warp-uniform makes ptxas serialize
            // the wgmmas)
            const int count = __shfl_sync(0xffffffffu, __ldg(offsets + g + 1) - begin, 0);
            const int* mp = records + (i64)begin * REC + 1;  // the records' masks
            int m_cur = mask_batch(mp, 0, count), m_next = mask_batch(mp, 32, count);
            for (int e = 0; e < count; e++, q++) {
                if (e % 32 == 0 && e > 0) {
                    m_cur = m_next;
                    m_next = mask_batch(mp, e + 32, count);
                }
                const int mask = uniform(__shfl_sync(0xffffffffu, m_cur, e % 32));
                const int mine = C > 1 ? mask : (mask >> rank) & 1;
                // (RS: this stage's fragments overwrite those of the group in flight: drain it first)
                if (!enter(q, pend, mine != 0, RS)) continue;
                const unsigned sa = base + (q % STAGES) * STAGE;
                if (RS) {
#pragma unroll
                    for (int i = 0; i < MI; i++)
#pragma unroll
                        for (int kk = 0; kk < KS; kk++) ldmatrix_x4(a[i][kk], sa + a_off[i][kk]);
                }
                wgmma_fence();
#pragma unroll
                for (int j = 0; j < C; j++) {
                    if (C > 1 && !((mine >> j) & 1)) continue;  // the branch goes around the column's wgmmas
                    const unsigned sb = sa + A_BYTES + j * W_BYTES;
#pragma unroll
                    for (int kk = 0; kk < KS; kk++) {
                        // fprop: B rows are k (N-major), 16 rows a step; bprop: rows are n (K-major), 32 bytes a step
                        const unsigned long long db = desc<ROW>(TRANS_W ? sb + kk * 32 : sb + kk * 16 * ROW);
#pragma unroll
                        for (int i = 0; i < MI; i++) {
                            if (RS)
                                GmmaRS<T, BS, TRANS_W ? 0 : 1>::run(acc[j][i], a[i][kk], db);
                            else
                                Gmma<T, BS, 0, TRANS_W ? 0 : 1>::run(acc[j][i],
                                                                     desc<ROW>(sa + (wg * MI + i) * 64 * ROW + kk * 32), db);
                        }
                    }
                }
                leave(q, pend);
            }
            tile_end(q, pend, count);  // then store, and start the next tile from zero
#pragma unroll
            for (int j = 0; j < C; j++)
#pragma unroll
                for (int i = 0; i < MI; i++)
#pragma unroll
                    for (int r = 0; r < NACC; r++) fence_operand(acc[j][i][r]);
            // accumulator fragment: warp v of the warpgroup holds rows 16v + lane/4 (+8), and for each 8
            // features r, features 8r + 2·(lane % 4) (+1)
            const int v = warp % 4;
#pragma unroll
            for (int j = 0; j < C; j++) {
                const int c = __shfl_sync(0xffffffffu, __ldg(colmap + c0 + j), 0);
                if (c < 0) continue;  // a last group with fewer columns
                TO* yc = y + (i64)c * BS + (lane % 4) * 2;
#pragma unroll
                for (int i = 0; i < MI; i++)
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        const i64 n = (i64)rt * BM + (wg * MI + i) * 64 + v * 16 + lane / 4 + h * 8;
                        if (n >= n_total) continue;
                        TO* yr = yc + n * out_features;
#pragma unroll
                        for (int r = 0; r < BS / 8; r++)
                            Pair<TO>::store(yr + r * 8, acc[j][i][r * 4 + h * 2], acc[j][i][r * 4 + h * 2 + 1],
                                            accumulate);
                    }
            }
            zero();
        }
    }
    // no CTA leaves while another of its cluster may still copy into its shared memory or arrive on its
    // barriers
    if (CS > 1) tma::cluster_sync();
}
