// attn's CUDA kernels: compiled at run time by NVRTC for the GPU that is there (see
// mod.rs), one function per engine operation or per stage of one. Layouts are the CPU
// engine's: row-major activations [rows, cols], weights [in, out], fused q/k/v rows of
// query heads then key heads then value heads, attention weights [b, heads, t, t].
// Every kernel walks its elements with a grid-stride loop or takes one row per block,
// so any grid size is correct; mod.rs picks the sizes.

typedef unsigned long long u64;
typedef long long i64;
#define INFINITY __int_as_float(0x7f800000)

#define EACH(i, n) for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
                        i += (i64)blockDim.x * gridDim.x)

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// The sum over the block (blockDim.x a multiple of 32), returned to every thread.
__device__ float block_sum(float v, float* sh) {
    v = warp_sum(v);
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    v = lane < (int)(blockDim.x >> 5) ? sh[lane] : 0.f;
    return warp_sum(v);
}
__device__ float block_max(float v, float* sh) {
    v = warp_max(v);
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    v = lane < (int)(blockDim.x >> 5) ? sh[lane] : -INFINITY;
    return warp_max(v);
}

// ------------------------------------------------------------------ elementwise

// y[r, j] += b[j]
extern "C" __global__ void add_bias(float* y, const float* b, i64 m, int n) {
    EACH(i, m * n) y[i] += b[i % n];
}

// out[i] = a[i] + b[i]
extern "C" __global__ void add(float* out, const float* a, const float* b, i64 n) {
    EACH(i, n) out[i] = a[i] + b[i];
}

// y[i] *= d[i]
extern "C" __global__ void mul_into(float* y, const float* d, i64 n) { EACH(i, n) y[i] *= d[i]; }

#define GELU_C 0.7978845608028654f
#define GELU_A 0.044715f

// x = y + b (bias by column); act = gelu(x) (tanh form); y is replaced by gelu'(x).
extern "C" __global__ void bias_gelu(float* y, const float* b, float* act, i64 m, int n) {
    EACH(i, m * n) {
        float x = y[i] + (b ? b[i % n] : 0.f);
        float th = tanhf(GELU_C * (x + GELU_A * x * x * x));
        act[i] = 0.5f * x * (1.f + th);
        y[i] = 0.5f * (1.f + th) + 0.5f * x * (1.f - th * th) * GELU_C * (1.f + 3.f * GELU_A * x * x);
    }
}

// act = silu(gate) * up for rows of gu [m, 2f] (gate, then up).
extern "C" __global__ void swiglu(const float* gu, i64 m, int f, float* act) {
    EACH(i, m * f) {
        i64 r = i / f;
        int j = (int)(i % f);
        float g = gu[r * 2 * f + j], u = gu[r * 2 * f + f + j];
        act[i] = g / (1.f + expf(-g)) * u;
    }
}

extern "C" __global__ void swiglu_bwd(const float* d, const float* gu, i64 m, int f, float* dgu) {
    EACH(i, m * f) {
        i64 r = i / f;
        int j = (int)(i % f);
        float g = gu[r * 2 * f + j], u = gu[r * 2 * f + f + j];
        float s = 1.f / (1.f + expf(-g));
        dgu[r * 2 * f + f + j] = d[i] * g * s;
        dgu[r * 2 * f + j] = d[i] * u * s * (1.f + g * (1.f - s));
    }
}

// ------------------------------------------------------------------ dropout

__device__ __forceinline__ unsigned mix32(unsigned x) {
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    return x ^ (x >> 16);
}

// out[i] = x[i] * mask(i): the CPU engine's counter-based mask, bit for bit (a 32-bit
// counter, the seed's low half plus i steps, keyed with its high half).
extern "C" __global__ void dropout(const float* x, float* out, i64 n, u64 seed, u64 threshold,
                                   float scale) {
    EACH(i, n) {
        unsigned z = (unsigned)seed + (unsigned)i * 0x9E3779B9u;
        unsigned h = mix32(z ^ (unsigned)(seed >> 32));
        float f = (u64)h < threshold ? 0.f : scale;
        out[i] = x[i] * f;
    }
}

// ------------------------------------------------------------------ norms

// LayerNorm (b non-null) or RMSNorm (b null) of one row per block; stats[2r] = mean
// (0 for RMSNorm), stats[2r + 1] = 1/sqrt(var + eps).
extern "C" __global__ void layer_norm(const float* x, const float* w, const float* b, float eps,
                                      int n, float* out, float* stats) {
    __shared__ float sh[32];
    i64 r = blockIdx.x;
    const float* xr = x + r * n;
    float mean = 0.f;
    if (b) {
        float s = 0.f;
        for (int j = threadIdx.x; j < n; j += blockDim.x) s += xr[j];
        mean = block_sum(s, sh) / n;
    }
    float q = 0.f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        float d = xr[j] - mean;
        q += d * d;
    }
    float rstd = 1.f / sqrtf(block_sum(q, sh) / n + eps);
    for (int j = threadIdx.x; j < n; j += blockDim.x)
        out[r * n + j] = (xr[j] - mean) * rstd * w[j] + (b ? b[j] : 0.f);
    if (threadIdx.x == 0) {
        stats[2 * r] = mean;
        stats[2 * r + 1] = rstd;
    }
}

// dx += the input gradient of layer_norm for one row per block.
extern "C" __global__ void layer_norm_bwd_x(const float* g, const float* x, const float* stats,
                                            const float* w, int has_bias, int n, float* dx) {
    __shared__ float sh[32];
    i64 r = blockIdx.x;
    const float *gr = g + r * n, *xr = x + r * n;
    float mean = stats[2 * r], rstd = stats[2 * r + 1];
    float a = 0.f, c = 0.f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        float gw = gr[j] * w[j];
        a += gw;
        c += gw * (xr[j] - mean) * rstd;
    }
    a = has_bias ? block_sum(a, sh) / n : 0.f;
    c = block_sum(c, sh) / n;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        float xh = (xr[j] - mean) * rstd;
        dx[r * n + j] += rstd * (gr[j] * w[j] - a - xh * c);
    }
}

// Partial weight and bias gradients of layer_norm: block (x, y) sums rows
// y·per .. (y+1)·per of g·x̂ and g for its columns into part[y, 0..n] and part[y, n..2n].
extern "C" __global__ void layer_norm_bwd_wb(const float* g, const float* x, const float* stats,
                                             int m, int n, int per, float* part) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    int r0 = blockIdx.y * per, r1 = min(m, r0 + per);
    float sw = 0.f, sb = 0.f;
    for (int r = r0; r < r1; r++) {
        float gv = g[(i64)r * n + j];
        sw += gv * (x[(i64)r * n + j] - stats[2 * r]) * stats[2 * r + 1];
        sb += gv;
    }
    part[(i64)blockIdx.y * 2 * n + j] = sw;
    part[(i64)blockIdx.y * 2 * n + n + j] = sb;
}

// Partial column sums of x [m, n] over row blocks of `per`: part[y, j].
extern "C" __global__ void col_sums(const float* x, int m, int n, int per, float* part) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    int r0 = blockIdx.y * per, r1 = min(m, r0 + per);
    float s = 0.f;
    for (int r = r0; r < r1; r++) s += x[(i64)r * n + j];
    part[(i64)blockIdx.y * n + j] = s;
}

// out[j] += Σ_c part[c·stride + j] for j < n (the partials' second stage, in order).
extern "C" __global__ void sum_parts(const float* part, int chunks, int stride, int n, float* out) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    float s = 0.f;
    for (int c = 0; c < chunks; c++) s += part[(i64)c * stride + j];
    out[j] += s;
}

// ------------------------------------------------------------------ loss, optimiser

// Softmax cross-entropy of one row of logits [m, v] per block, with label smoothing eps;
// losses[r] = the row's loss; with want_grad the row becomes
// grad_scale·(softmax − (1 − eps)·onehot − eps/v).
extern "C" __global__ void cross_entropy(float* logits, int v, const unsigned* targets, float eps,
                                         float grad_scale, int want_grad, float* losses) {
    __shared__ float sh[32];
    i64 r = blockIdx.x;
    float* x = logits + r * v;
    int y = (int)targets[r];
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < v; j += blockDim.x) mx = fmaxf(mx, x[j]);
    mx = block_max(mx, sh);
    float s = 0.f, t = 0.f;
    for (int j = threadIdx.x; j < v; j += blockDim.x) {
        s += expf(x[j] - mx);
        t += x[j];
    }
    s = block_sum(s, sh);
    float mean = eps > 0.f ? block_sum(t, sh) / v : 0.f;
    float lse = logf(s) + mx, xy = x[y];
    if (threadIdx.x == 0)
        losses[r] = eps > 0.f ? (1.f - eps) * (lse - xy) + eps * (lse - mean) : lse - xy;
    if (!want_grad) return;
    __syncthreads();  // every thread has read x[y] before it changes
    float inv = grad_scale / s, spread = grad_scale * eps / v;
    for (int j = threadIdx.x; j < v; j += blockDim.x) {
        float gr = expf(x[j] - mx) * inv - spread;
        if (j == y) gr -= grad_scale * (1.f - eps);
        x[j] = gr;
    }
}

extern "C" __global__ void adamw(float* p, const float* g, float* m, float* v, i64 n, float lr,
                                 float decay, float b1, float b2, float bc1, float bc2, float eps,
                                 float gs) {
    // As the CPU's: the bias corrections folded into a step and 1/sqrt(bc2).
    float keep = 1.f - lr * decay, step = lr / bc1, rs = 1.f / sqrtf(bc2);
    EACH(i, n) {
        float gi = g[i] * gs;
        float mi = b1 * m[i] + (1.f - b1) * gi;
        float vi = b2 * v[i] + (1.f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * keep - step * mi / fmaf(sqrtf(vi), rs, eps);
    }
}

// Σ x² per block, in f64, into part[blockIdx.x].
extern "C" __global__ void sum_squares(const float* x, i64 n, double* part) {
    __shared__ double sh[32];
    double s = 0.0;
    EACH(i, n) s += (double)x[i] * x[i];
    s = warp_sum_d(s);
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    if (lane == 0) sh[w] = s;
    __syncthreads();
    if (w == 0) {
        s = lane < (int)(blockDim.x >> 5) ? sh[lane] : 0.0;
        s = warp_sum_d(s);
        if (lane == 0) part[blockIdx.x] = s;
    }
}

// ------------------------------------------------------------------ embeddings

// out[r] = wte[ids[r]] + wpe[r % t] (wpe may be null).
extern "C" __global__ void embed(const unsigned* ids, const float* wte, const float* wpe, int t, int c,
                                 i64 rows, float* out) {
    EACH(i, rows * c) {
        i64 r = i / c;
        int j = (int)(i % c);
        out[i] = wte[(i64)ids[r] * c + j] + (wpe ? wpe[(i64)(r % t) * c + j] : 0.f);
    }
}

// dwte[ids[r]] += g[r] (atomic: tokens repeat).
extern "C" __global__ void embed_bwd(const unsigned* ids, const float* g, int c, i64 rows, float* dwte) {
    EACH(i, rows * c) atomicAdd(&dwte[(i64)ids[i / c] * c + i % c], g[i]);
}

// dwpe[pos] += Σ over the b sequences of g[bi·t + pos] (in order: no atomics).
extern "C" __global__ void pos_bwd(const float* g, int b, int t, int c, float* dwpe) {
    EACH(i, (i64)t * c) {
        i64 pos = i / c;
        int j = (int)(i % c);
        float s = 0.f;
        for (int bi = 0; bi < b; bi++) s += g[((i64)bi * t + pos) * c + j];
        dwpe[i] += s;
    }
}

// ------------------------------------------------------------------ attention

// dst [b, nh, t, hd] ← the nh heads of src rows [b·t, width] from column col0 on.
extern "C" __global__ void gather_heads(const float* src, int width, int col0, int b, int t, int nh,
                                        int hd, float* dst) {
    EACH(i, (i64)b * nh * t * hd) {
        int d = (int)(i % hd);
        i64 rest = i / hd;
        int pos = (int)(rest % t);
        rest /= t;
        int h = (int)(rest % nh);
        i64 bi = rest / nh;
        dst[i] = src[(bi * t + pos) * width + col0 + h * hd + d];
    }
}

// The inverse of gather_heads: dst rows [b·t, width] from column col0 on ← src heads.
extern "C" __global__ void scatter_heads(const float* src, int width, int col0, int b, int t, int nh,
                                         int hd, float* dst) {
    EACH(i, (i64)b * nh * t * hd) {
        int d = (int)(i % hd);
        i64 rest = i / hd;
        int pos = (int)(rest % t);
        rest /= t;
        int h = (int)(rest % nh);
        i64 bi = rest / nh;
        dst[(bi * t + pos) * width + col0 + h * hd + d] = src[i];
    }
}

// Softmax of each row of scores [rows, t] where row r is query position i = r % t: the
// keys j ≤ i (and j > i − window when window > 0) alone; the others get weight 0.
extern "C" __global__ void causal_softmax(float* s, int t, int window, i64 rows) {
    __shared__ float sh[32];
    i64 r = blockIdx.x;
    float* x = s + r * t;
    int i = (int)(r % t);
    int lo = (window > 0 && i + 1 > window) ? i + 1 - window : 0;
    float mx = -INFINITY;
    for (int j = lo + threadIdx.x; j <= i; j += blockDim.x) mx = fmaxf(mx, x[j]);
    mx = block_max(mx, sh);
    float sum = 0.f;
    for (int j = lo + threadIdx.x; j <= i; j += blockDim.x) sum += expf(x[j] - mx);
    sum = block_sum(sum, sh);
    float inv = 1.f / sum;
    for (int j = threadIdx.x; j < t; j += blockDim.x)
        x[j] = (j >= lo && j <= i) ? expf(x[j] - mx) * inv : 0.f;
}

// The softmax's backward over rows: d ← p ⊙ (d − Σ p·d).
extern "C" __global__ void softmax_bwd(const float* p, float* d, int t) {
    __shared__ float sh[32];
    i64 r = blockIdx.x;
    const float* pr = p + r * t;
    float* dr = d + r * t;
    float dot = 0.f;
    for (int j = threadIdx.x; j < t; j += blockDim.x) dot += pr[j] * dr[j];
    dot = block_sum(dot, sh);
    for (int j = threadIdx.x; j < t; j += blockDim.x) dr[j] = pr[j] * (dr[j] - dot);
}

// Rotary positions on rows of qkv [m, width] in place: the first `heads` heads of each
// row (queries, then keys), pairs (k, k + half) of each, row r at position r % t; the
// tables cos, sin [positions, half] start at position `first`. sign −1 rotates back.
extern "C" __global__ void rope(float* qkv, i64 m, int t, int width, int heads, int half,
                                const float* cs, const float* sn, int first, float sign) {
    EACH(i, m * heads * half) {
        int k = (int)(i % half);
        i64 rest = i / half;
        int h = (int)(rest % heads);
        i64 r = rest / heads;
        int pos = (int)(r % t) - first;
        float* x = qkv + r * width + (i64)h * 2 * half;
        float c = cs[(i64)pos * half + k], s = sign * sn[(i64)pos * half + k];
        float x1 = x[k], x2 = x[k + half];
        x[k] = x1 * c - x2 * s;
        x[k + half] = x2 * c + x1 * s;
    }
}

// ------------------------------------------------------------------ bf16

// f32 → bf16 (round to nearest even; NaN kept quiet), as 16-bit words.
extern "C" __global__ void to_bf16(const float* x, unsigned short* y, i64 n) {
    EACH(i, n) {
        unsigned u = __float_as_uint(x[i]);
        if ((u & 0x7fffffffu) > 0x7f800000u) {
            y[i] = (unsigned short)((u >> 16) | 0x40);
        } else {
            u += 0x7fffu + ((u >> 16) & 1u);
            y[i] = (unsigned short)(u >> 16);
        }
    }
}
