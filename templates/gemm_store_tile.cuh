// qfuse GEMM epilogue, stage 2, shared by templates/gemm.cu and templates/gemm_wonly.cu (inserted
// as their `store_tile` parameter in the kernel body). Expects in scope: the staged f32 accumulator tile
// `tile` [BM][OUT_STRIDE] (stage 1 done and synchronized), BM, BN, THREADS, VEC, N (compile-time),
// M, m0, n0, tid, the output pointer Y and the epilogue inputs' pointers; the placeholders are
// filled by src/codegen/gemm.rs (epilogue_values). The mapping is in gemm.cu's header; `tile_col`
// is `col` except in a GLU GEMM (src/codegen/glu.rs), whose tile pairs gate and up columns.
//
// (The text below the first empty line is what gets inserted.)

    // Stage 2: 4 consecutive columns of one row per thread and pass (mapping in the header).
    // Passes go in batches of OUT_BATCH: the batch's shared-memory reads and global input loads
    // are all issued before any of its results is computed, so their latencies overlap.
    constexpr int CHUNKS_PER_OUT_ROW = BN / VEC;
    constexpr int OUT_PASSES = BM * CHUNKS_PER_OUT_ROW / THREADS;
    constexpr int OUT_BATCH = OUT_PASSES % 4 == 0 ? 4 : OUT_PASSES % 2 == 0 ? 2 : 1;
#pragma unroll 1
    for (int i0 = 0; i0 < OUT_PASSES; i0 += OUT_BATCH) {
        float acc4[OUT_BATCH][4];
{{declare_inputs}}
#pragma unroll
        for (int u = 0; u < OUT_BATCH; ++u) {
            const int c = tid + (i0 + u) * THREADS;
            const int row = c / CHUNKS_PER_OUT_ROW;
            const int col = (c % CHUNKS_PER_OUT_ROW) * VEC;
            const int m = m0 + row;
            const int n = n0 + col;
            const size_t mn = (size_t)m * N + n;  // element (m, n) of an [M, N] tensor
            (void)n;
            (void)mn;
            qf_ld4_f32(tile + row * OUT_STRIDE + {{tile_col}}, acc4[u]);
            if (m < M) {
                // Epilogue inputs at (m, n .. n+3).
{{load_inputs}}
            }
        }
#pragma unroll
        for (int u = 0; u < OUT_BATCH; ++u) {
            const int c = tid + (i0 + u) * THREADS;
            const int row = c / CHUNKS_PER_OUT_ROW;
            const int col = (c % CHUNKS_PER_OUT_ROW) * VEC;
            const int m = m0 + row;
            const size_t mn = (size_t)m * N + n0 + col;
            if (m < M) {
                float y[4];
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const qf_rn_f32 acc = acc4[u][j];
{{element_inputs}}
                    y[j] = {{value}};
                }
                {{store}};
            }
        }
    }
