// The training step's kernels other than products (those are cuBLAS calls). f32 throughout, row-major,
// shapes in the engine's letters (src/engine/mod.rs). Each kernel mirrors one CPU function, named above
// it. Reductions that feed parameter gradients loop in a fixed order (one thread per output element)
// rather than using atomics, so that the GPU step is reproducible run to run; the one exception is the
// token-embedding scatter, whose collisions depend on the data (see embedding_backward_tokens).
// extern "C" keeps the names unmangled for cuModuleGetFunction.

#define WARP 32
// NVRTC has no <math.h>: −∞ spelled by its bits (the identity of max).
#define NEG_INF (__int_as_float(0xff800000))

__device__ float warp_sum(float v) {
    for (int o = WARP / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}
__device__ float warp_max(float v) {
    for (int o = WARP / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    return v;
}
// Sum over a block of blockDim.x threads (a multiple of 32, at most 1024); every thread gets the sum.
__device__ float block_sum(float v, float* shared) {
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, warps = blockDim.x / WARP;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : 0.0f;
    return warp_sum(v);
}
__device__ float block_max(float v, float* shared) {
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, warps = blockDim.x / WARP;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : NEG_INF;
    return warp_max(v);
}

// embedding.rs: x[n, c] = wte[tokens[n], c] + wpe[n mod T, c]; grid-stride over N·d.
extern "C" __global__ void embedding_forward(float* x, const unsigned int* tokens, const float* wte,
                                             const float* wpe, int N, int T, int d) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < (long)N * d; i += (long)gridDim.x * blockDim.x) {
        long n = i / d, c = i % d;
        x[i] = wte[(long)tokens[n] * d + c] + wpe[(n % T) * d + c];
    }
}

// dwpe[t, c] += Σ_b dx[b·T + t, c], batch in order: one thread per (t, c).
extern "C" __global__ void embedding_backward_positions(float* dwpe, const float* dx, int B, int T, int d) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= (long)T * d) return;
    long t = i / d, c = i % d;
    float sum = 0.0f;
    for (int b = 0; b < B; b++) sum += dx[((long)b * T + t) * d + c];
    dwpe[i] += sum;
}

// dwte[tokens[n], c] += dx[n, c]. Atomics: which rows collide depends on the batch's tokens, so the
// order of the additions (and the last bits of dwte) may differ between runs of the same step.
extern "C" __global__ void embedding_backward_tokens(float* dwte, const float* dx, const unsigned int* tokens,
                                                     int N, int d) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < (long)N * d; i += (long)gridDim.x * blockDim.x) {
        long n = i / d, c = i % d;
        atomicAdd(&dwte[(long)tokens[n] * d + c], dx[i]);
    }
}

// out = a + b elementwise (the residual stream; also accumulates two gradient paths).
extern "C" __global__ void residual_add(float* out, const float* a, const float* b, long len) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < len; i += (long)gridDim.x * blockDim.x)
        out[i] = a[i] + b[i];
}

// layernorm.rs forward, one block per row: keeps x̂ and rstd as the CPU cache does.
extern "C" __global__ void layernorm_forward(float* y, float* normalized, float* rstd, const float* x,
                                             const float* w, const float* b, int N, int d, float eps) {
    __shared__ float shared[WARP];
    int n = blockIdx.x;
    if (n >= N) return;
    const float* row = x + (long)n * d;
    float s = 0.0f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) s += row[c];
    float mean = block_sum(s, shared) / d;
    float v = 0.0f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) v += (row[c] - mean) * (row[c] - mean);
    float r = 1.0f / sqrtf(block_sum(v, shared) / d + eps);
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float h = (row[c] - mean) * r;
        normalized[(long)n * d + c] = h;
        y[(long)n * d + c] = h * w[c] + b[c];
    }
    if (threadIdx.x == 0) rstd[n] = r;
}

// layernorm.rs backward, input gradient: dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)), ĝ = dy·w. The parameter
// gradients are column_sum_product (dweight) and column_sum (dbias).
extern "C" __global__ void layernorm_backward(float* dx, const float* dy, const float* normalized,
                                              const float* rstd, const float* w, int N, int d) {
    __shared__ float shared[WARP];
    int n = blockIdx.x;
    if (n >= N) return;
    const float* g = dy + (long)n * d;
    const float* h = normalized + (long)n * d;
    float a = 0.0f, bsum = 0.0f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float gw = g[c] * w[c];
        a += gw;
        bsum += gw * h[c];
    }
    float mean_g = block_sum(a, shared) / d;
    float mean_gh = block_sum(bsum, shared) / d;
    for (int c = threadIdx.x; c < d; c += blockDim.x)
        dx[(long)n * d + c] = rstd[n] * (g[c] * w[c] - mean_g - h[c] * mean_gh);
}

// layer.rs fill_rows, the C of a C ← A·B + C product: out[n·ld + c] = bias[c] (+ base[n·d + c] when
// has_base), for a block of d columns of rows ld apart (ld = d when contiguous; 3d for one of q, k, v).
extern "C" __global__ void broadcast_rows(float* out, const float* base, const float* bias, int has_base, int N,
                                          int d, int ld) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < (long)N * d; i += (long)gridDim.x * blockDim.x) {
        long n = i / d, c = i % d;
        out[n * ld + c] = has_base ? base[i] + bias[c] : bias[c];
    }
}

// Bias gradients: out[c] += Σ_n a[n·ld + c], rows in order, for d columns of rows ld apart.
extern "C" __global__ void column_sum(float* out, const float* a, int N, int d, int ld) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= d) return;
    float s = 0.0f;
    for (int n = 0; n < N; n++) s += a[(long)n * ld + c];
    out[c] += s;
}

// LayerNorm weight gradient: out[c] += Σ_n a[n, c]·b[n, c], rows in order.
extern "C" __global__ void column_sum_product(float* out, const float* a, const float* b, int N, int d) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= d) return;
    float s = 0.0f;
    for (int n = 0; n < N; n++) s += a[(long)n * d + c] * b[(long)n * d + c];
    out[c] += s;
}

// gelu.rs, tanh form: g(x) = ½x(1 + tanh(c(x + a x³))).
extern "C" __global__ void gelu_forward(float* y, const float* x, long len) {
    const float c = 0.7978845608028654f, a = 0.044715f;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < len; i += (long)gridDim.x * blockDim.x) {
        float v = x[i];
        y[i] = 0.5f * v * (1.0f + tanhf(c * (v + a * v * v * v)));
    }
}

// kernels::gelu_derivative_scalar: ½(1 + t) + ½x(1 − t²)·c(1 + 3a x²), t = tanh(c(x + a x³)).
extern "C" __global__ void gelu_backward(float* dx, const float* dy, const float* x, long len) {
    const float c = 0.7978845608028654f, a = 0.044715f;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < len; i += (long)gridDim.x * blockDim.x) {
        float v = x[i];
        float t = tanhf(c * (v + a * v * v * v));
        dx[i] = dy[i] * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * c * (1.0f + 3.0f * a * v * v));
    }
}

// attention.rs + locality/hook.rs transform_scores, then the causal softmax; in place on the scaled
// scores s = q·kᵀ/√h of every (sequence, head) site, [S, T, T] with S = B·H (site = sequence·H + head).
// One block per (site, query row i). For covered rows (covered[site·T + i] ≠ 0) and apply ≠ 0 (λ ≠ 0:
// λ = 0 leaves the scores untouched bit for bit, as on the CPU): s'_ij = s_ij/τ − bias_i·1[j ∉ T_i],
// bias_i = λ·μ·strength_i (precomputed on the host into bias[site·T + i]); targets[(site·T + i)·T + j]
// is 1 for j ∈ T_i. Entries j > i are written 0.
extern "C" __global__ void attention_softmax_forward(float* att, const unsigned char* covered,
                                                     const unsigned char* targets, const float* bias,
                                                     float inv_tau, int apply, int T) {
    __shared__ float shared[WARP];
    long row = blockIdx.x;  // site·T + i
    int i = row % T;
    float* s = att + row * T;
    int transform = apply && covered[row];
    float m = NEG_INF;
    for (int j = threadIdx.x; j <= i; j += blockDim.x) {
        float v = s[j];
        if (transform) {
            v = v * inv_tau;
            if (!targets[row * T + j]) v -= bias[row];
        }
        s[j] = v;
        m = fmaxf(m, v);
    }
    m = block_max(m, shared);
    float z = 0.0f;
    for (int j = threadIdx.x; j <= i; j += blockDim.x) {
        float e = expf(s[j] - m);
        s[j] = e;
        z += e;
    }
    z = block_sum(z, shared);
    for (int j = threadIdx.x; j < T; j += blockDim.x) s[j] = j <= i ? s[j] / z : 0.0f;
}

// hook.rs attention_penalty: for covered rows, groups g_{i,k} = off-target keys j ≤ i of block k;
// Ω_i = Σ_g √|g|·‖α_{i,g}‖ and datt_ij += weight·√|g|·α_ij / max(‖α_{i,g}‖, 1e-12). One block per
// (site, row); dynamic shared memory holds 2·K floats (K = block count, general block included).
// The group sums run on one thread in key order, as on the CPU (T is at most a few thousand).
// blocks[sequence·T + j] is the block of key j; penalty[row] receives weight·Ω_i (0 for uncovered rows),
// summed on the host in row order.
extern "C" __global__ void attention_penalty(float* datt, float* penalty, const float* att,
                                             const unsigned char* covered, const unsigned char* targets,
                                             const unsigned int* blocks, float weight, int H, int T, int K) {
    extern __shared__ float groups[];  // sizes[K], squares[K]
    long row = blockIdx.x;
    int i = row % T;
    long site = row / T;
    long sequence = site / H;
    if (!covered[row] || weight == 0.0f) {
        if (threadIdx.x == 0) penalty[row] = 0.0f;
        return;
    }
    float* sizes = groups;
    float* squares = groups + K;
    const float* a = att + row * T;
    const unsigned int* block = blocks + sequence * T;
    if (threadIdx.x == 0) {
        for (int k = 0; k < K; k++) sizes[k] = squares[k] = 0.0f;
        for (int j = 0; j <= i; j++) {
            if (targets[row * T + j]) continue;
            sizes[block[j]] += 1.0f;
            squares[block[j]] += a[j] * a[j];
        }
        float total = 0.0f;
        for (int k = 0; k < K; k++) total += sqrtf(sizes[k]) * sqrtf(squares[k]);
        penalty[row] = weight * total;
    }
    __syncthreads();
    if (datt == 0) return;
    for (int j = threadIdx.x; j <= i; j += blockDim.x) {
        if (targets[row * T + j]) continue;
        int k = block[j];
        datt[row * T + j] += weight * sqrtf(sizes[k]) / fmaxf(sqrtf(squares[k]), 1e-12f) * a[j];
    }
}

// attention.rs backward through the softmax, then hook.rs transform_scores_backward, in place:
// ds_ij = α_ij(γ_j − Σ_l α_il γ_l) for j ≤ i (γ = datt), times 1/τ on covered rows when apply ≠ 0.
extern "C" __global__ void attention_softmax_backward(float* datt, const float* att, const unsigned char* covered,
                                                      float inv_tau, int apply, int T) {
    __shared__ float shared[WARP];
    long row = blockIdx.x;
    int i = row % T;
    const float* a = att + row * T;
    float* g = datt + row * T;
    float dot = 0.0f;
    for (int j = threadIdx.x; j <= i; j += blockDim.x) dot += a[j] * g[j];
    dot = block_sum(dot, shared);
    float scale = apply && covered[row] ? inv_tau : 1.0f;
    for (int j = threadIdx.x; j < T; j += blockDim.x) g[j] = j <= i ? a[j] * (g[j] - dot) * scale : 0.0f;
}

// copy.rs gates (METHOD §4, copy paths): w_c = λ s_c e^{z_c} / (1 + λ Σ s_c' e^{z_c'}) over the rules
// active at the row, w_0 = 1 / (1 + …). One thread per row; z [N, C], active [N, C], strength [C];
// writes w [N, C] (0 where inactive) and w0 [N].
extern "C" __global__ void copy_gates(float* w, float* w0, const float* z, const unsigned char* active,
                                      const float* strength, float lambda, int N, int C) {
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    float denominator = 1.0f;
    for (int c = 0; c < C; c++)
        if (active[(long)n * C + c]) denominator += lambda * strength[c] * expf(z[(long)n * C + c]);
    for (int c = 0; c < C; c++)
        w[(long)n * C + c] =
            active[(long)n * C + c] ? lambda * strength[c] * expf(z[(long)n * C + c]) / denominator : 0.0f;
    w0[n] = 1.0f / denominator;
}

// loss.rs, the fused output loss on one chunk of rows, in place on logits [rows, V] (from the LN_f
// output times Uᵀ): q = softmax(logits), p = w0·q(y) + copy_mass (copy_mass = Σ_c w_c κ_c(y), from the
// caches on the host side), CE = −ln p; ∂CE/∂logits = r0·(q − onehot(y)) with r0 = w0·q(y)/p, times
// grad_scale (1/rows of the batch). One block per row; writes loss[row] and p[row].
extern "C" __global__ void crossentropy_copy(float* logits, float* loss, float* p_out, const unsigned int* targets,
                                             const float* w0, const float* copy_mass, float grad_scale, int V) {
    __shared__ float shared[WARP];
    long row = blockIdx.x;
    float* x = logits + row * V;
    float m = NEG_INF;
    for (int v = threadIdx.x; v < V; v += blockDim.x) m = fmaxf(m, x[v]);
    m = block_max(m, shared);
    float z = 0.0f;
    for (int v = threadIdx.x; v < V; v += blockDim.x) z += expf(x[v] - m);
    z = block_sum(z, shared);
    unsigned int y = targets[row];
    float qy = expf(x[y] - m) / z;
    float p = w0[row] * qy + copy_mass[row];
    float r0 = w0[row] * qy / p;
    __syncthreads();
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        float q = expf(x[v] - m) / z;
        x[v] = grad_scale * r0 * (q - (v == y ? 1.0f : 0.0f));
    }
    if (threadIdx.x == 0) {
        loss[row] = -logf(p);
        p_out[row] = p;
    }
}

// ∂CE/∂z_c = w_c − r_c, r_c = w_c κ_c(y)/p, times grad_scale; one thread per (row, rule).
extern "C" __global__ void copy_gates_backward(float* dz, const float* w, const float* kappa_y, const float* p,
                                               float grad_scale, int N, int C) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= (long)N * C) return;
    long n = i / C;
    dz[i] = grad_scale * (w[i] - w[i] * kappa_y[i] / p[n]);
}

// optim.rs, first half: partial sums of g² per block for the global norm (summed on the host in block
// order, in f64 as the CPU does). Launch with 256 threads.
extern "C" __global__ void squared_norm_partial(float* partial, const float* g, long len) {
    __shared__ float shared[WARP];
    float s = 0.0f;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < len; i += (long)gridDim.x * blockDim.x)
        s += g[i] * g[i];
    s = block_sum(s, shared);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// optim.rs update of one tensor: g ← g·clip; m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²;
// p ← p·decay − step_size·m / (√v·inv_sqrt_bias2 + eps).
extern "C" __global__ void adamw(float* p, const float* g, float* m, float* v, long len, float clip, float b1,
                                 float b2, float decay, float step_size, float inv_sqrt_bias2, float eps) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < len; i += (long)gridDim.x * blockDim.x) {
        float grad = g[i] * clip;
        m[i] = b1 * m[i] + (1.0f - b1) * grad;
        v[i] = b2 * v[i] + (1.0f - b2) * grad * grad;
        p[i] = p[i] * decay - step_size * m[i] / (sqrtf(v[i]) * inv_sqrt_bias2 + eps);
    }
}
