// Fused CPU kernels of biased attention (bsatnp.attention.fused_cpu).
//
// A block of query rows at a time, the whole attention in one pass: q k^T, the bias
// bias[j] = sum_u amp[u] * exp(-rate[u] * r(q_i, k_j)) with r = |q_i - k_j|^2 (rbf) or
// |q_i - k_j| (exponential), the softmax and P v; the block's scores stay in L1/L2 and the
// head's keys and values in L2, each key or value row loaded once per block of rows.
//   biased_attention:          inference over every key (no mask), in chunks of keys with
//                              an online softmax;
//   attention_train_forward:   training, each task over its first lengths[b] keys, the
//                              probabilities kept for the backward;
//   attention_train_backward:  dS = P (dO v^T - delta), dq = dS k, dk = dS^T q, dv = P^T dO,
//                              and per row the sums sum_j dS e_u(r) and sum_j dS r e_u(r)
//                              that give the bias parameters' gradients.
// exp is a Cephes-style polynomial on clamped arguments: vectorisable, no subnormal results.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

inline float exp_clamped(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// Distances of one query (coordinates cq[C]) to the first n keys (ckT [C, ld]): r[j], j < n.
inline void row_distances(float* r, const float* cq, const float* ckT, int64_t C, int64_t ld,
                          int64_t n, bool root) {
  for (int64_t j = 0; j < n; ++j) r[j] = 0.0f;
  for (int64_t c = 0; c < C; ++c) {
    const float qc = cq[c];
    const float* kc = ckT + c * ld;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const float d = qc - kc[j];
      r[j] += d * d;
    }
  }
  if (root) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) r[j] = std::sqrt(r[j]);
  }
}

void check(const at::Tensor& t, int64_t dim, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous() &&
                  t.dim() == dim,
              name, " must be a contiguous float32 CPU tensor with ", dim, " dimensions");
}

// 16 floats: one AVX-512 register (two AVX2 registers where the machine has no AVX-512).
typedef float vf16 __attribute__((vector_size(64)));

inline vf16 load16(const float* p) {
  vf16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline void store16(float* p, const vf16& v) { std::memcpy(p, &v, sizeof v); }

// o[r * ldo + c] = scale[r] * sum_{t < T} x[r * ldx + t] * y[t * ldy + c] for R rows and
// c < N (ADD: o[r * ldo + c] += ...): a block of rows times a row-major matrix, 32 columns at
// a time in registers.
template <int R, bool ADD = false>
void block_product(float* o, int64_t ldo, const float* x, int64_t ldx, const float* y,
                   int64_t ldy, int64_t T, int64_t N, const float* scale) {
  int64_t c0 = 0;
  for (; c0 + 32 <= N; c0 += 32) {
    vf16 acc[R][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = vf16{};
    for (int64_t t = 0; t < T; ++t) {
      const vf16 y0 = load16(y + t * ldy + c0), y1 = load16(y + t * ldy + c0 + 16);
      for (int r = 0; r < R; ++r) {
        const float xv = x[r * ldx + t];
        acc[r][0] += xv * y0;
        acc[r][1] += xv * y1;
      }
    }
    for (int r = 0; r < R; ++r) {
      float* orow = o + r * ldo + c0;
      if (ADD) {
        store16(orow, load16(orow) + scale[r] * acc[r][0]);
        store16(orow + 16, load16(orow + 16) + scale[r] * acc[r][1]);
      } else {
        store16(orow, scale[r] * acc[r][0]);
        store16(orow + 16, scale[r] * acc[r][1]);
      }
    }
  }
  for (; c0 < N; ++c0) {
    for (int r = 0; r < R; ++r) {
      float acc = 0.0f;
      for (int64_t t = 0; t < T; ++t) acc += x[r * ldx + t] * y[t * ldy + c0];
      o[r * ldo + c0] = (ADD ? o[r * ldo + c0] : 0.0f) + scale[r] * acc;
    }
  }
}

// g[j * ldg + c] += sum_r p[r * ldp + j] * x[r * ldx + c] for j < n, c < W (R rows).
template <int R>
void block_accumulate(float* g, int64_t ldg, const float* p, int64_t ldp, const float* x,
                      int64_t ldx, int64_t n, int64_t W) {
  int64_t c0 = 0;
  for (; c0 + 32 <= W; c0 += 32) {
    vf16 xr[R][2];
    for (int r = 0; r < R; ++r) {
      xr[r][0] = load16(x + r * ldx + c0);
      xr[r][1] = load16(x + r * ldx + c0 + 16);
    }
    for (int64_t j = 0; j < n; ++j) {
      vf16 g0 = load16(g + j * ldg + c0), g1 = load16(g + j * ldg + c0 + 16);
      for (int r = 0; r < R; ++r) {
        const float pv = p[r * ldp + j];
        g0 += pv * xr[r][0];
        g1 += pv * xr[r][1];
      }
      store16(g + j * ldg + c0, g0);
      store16(g + j * ldg + c0 + 16, g1);
    }
  }
  for (; c0 < W; ++c0) {
    for (int64_t j = 0; j < n; ++j) {
      float acc = 0.0f;
      for (int r = 0; r < R; ++r) acc += p[r * ldp + j] * x[r * ldx + c0];
      g[j * ldg + c0] += acc;
    }
  }
}

// One row's scores over a chunk of n > 0 keys against the row's running max m and sum l:
// s[j] <- exp(s[j] + bias[j] - m'), m' = max(m, max_j (s[j] + bias[j])), l <- l * alpha + sum_j
// s[j], m <- m'; returns alpha = exp(m - m'), the factor of what was summed before (0 when
// first: m and l are set from this chunk alone).
inline float row_bias_exp(float* s, const float* r, const float* amp, const float* rate,
                          int64_t U, int64_t n, float& m, float& l, bool first) {
  for (int64_t u = 0; u < U; ++u) {
    const float a = amp[u], minus_rate = -rate[u];
    if (a == 0.0f) continue;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) s[j] += a * exp_clamped(minus_rate * r[j]);
  }
  float cm = s[0];
#pragma omp simd reduction(max : cm)
  for (int64_t j = 1; j < n; ++j) cm = s[j] > cm ? s[j] : cm;
  const float m_new = first || cm > m ? cm : m;
  const float alpha = first ? 0.0f : exp_clamped(m - m_new);
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    const float e = exp_clamped(s[j] - m_new);
    s[j] = e;
    sum += e;
  }
  m = m_new;
  l = l * alpha + sum;
  return alpha;
}

// Inference, R rows of one head over keys j0..j0+n: scores s = q k^T into s [R, lds], then
// the online softmax: acc [R, Dv] <- alpha * acc + P v, with the rows' max m and sum l.
// r: the rows' distances to these keys (ld ldr).
template <int R>
void attend_chunk(float* acc, float* m, float* l, const float* q, const float* kT,
                  const float* v, const float* r, int64_t ldr, const float* amp,
                  const float* rate, int64_t D, int64_t Lk, int64_t Dv, int64_t U, int64_t j0,
                  int64_t n, bool first, float* s, int64_t lds) {
  float unit[R];
  for (int rr = 0; rr < R; ++rr) unit[rr] = 1.0f;
  block_product<R>(s, lds, q, D, kT + j0, Lk, D, n, unit);
  for (int rr = 0; rr < R; ++rr) {
    const float alpha =
        row_bias_exp(s + rr * lds, r + rr * ldr, amp, rate, U, n, m[rr], l[rr], first);
    if (!first && alpha != 1.0f) {
      float* arow = acc + rr * Dv;
#pragma omp simd
      for (int64_t c = 0; c < Dv; ++c) arow[c] *= alpha;
    }
  }
  if (first)
    block_product<R>(acc, Dv, s, lds, v + j0 * Dv, Dv, n, Dv, unit);
  else
    block_product<R, true>(acc, Dv, s, lds, v + j0 * Dv, Dv, n, Dv, unit);
}

constexpr int kRows = 8;  // query rows in registers: keys and values are read once per 8 rows

// Training forward of one (task, head) over its first n keys: P rows normalised, out = P v.
template <int R>
void train_forward_block(float* out, float* p, const float* q, const float* kT,
                         const float* v, const float* cq, const float* ckT, const float* amp,
                         const float* rate, int64_t D, int64_t Lk, int64_t Dv, int64_t C,
                         int64_t U, bool root, int64_t n, float* r) {
  float unit[R];
  for (int rr = 0; rr < R; ++rr) unit[rr] = 1.0f;
  for (int rr = 0; rr < R; ++rr) row_distances(r + rr * Lk, cq + rr * C, ckT, C, Lk, n, root);
  block_product<R>(p, Lk, q, D, kT, Lk, D, n, unit);  // scores = q k^T
  for (int rr = 0; rr < R; ++rr) {
    float* pr = p + rr * Lk;
    float m, l = 0.0f;
    row_bias_exp(pr, r + rr * Lk, amp, rate, U, n, m, l, true);
    const float inv = 1.0f / l;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) pr[j] *= inv;
  }
  block_product<R>(out, Dv, p, Lk, v, Dv, n, Dv, unit);  // out = P v
}

// Training backward of one (task, head), rows i0..i0+R: dS = P (dO v^T - delta), the bias
// sums, dq rows = dS k, and dk += dS^T q, dv += P^T dO.
template <int R>
void train_backward_block(float* dq, float* dk, float* dv, float* sums, const float* p,
                          const float* dout, const float* delta, const float* q,
                          const float* k, const float* vT, const float* cq, const float* ckT,
                          const float* rate, int64_t D, int64_t Lk, int64_t Dv, int64_t C,
                          int64_t U, bool root, int64_t n, float* r, float* ds) {
  float unit[R];
  for (int rr = 0; rr < R; ++rr) unit[rr] = 1.0f;
  block_product<R>(ds, Lk, dout, Dv, vT, Lk, Dv, n, unit);  // dP = dO v^T
  for (int rr = 0; rr < R; ++rr) {
    float* dsr = ds + rr * Lk;
    const float* pr = p + rr * Lk;
    const float dl = delta[rr];
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) dsr[j] = pr[j] * (dsr[j] - dl);
    float* rr_dist = r + rr * Lk;
    row_distances(rr_dist, cq + rr * C, ckT, C, Lk, n, root);
    for (int64_t u = 0; u < U; ++u) {
      const float minus_rate = -rate[u];
      float s1 = 0.0f, s2 = 0.0f;
#pragma omp simd reduction(+ : s1, s2)
      for (int64_t j = 0; j < n; ++j) {
        const float t = dsr[j] * exp_clamped(minus_rate * rr_dist[j]);
        s1 += t;
        s2 += t * rr_dist[j];
      }
      sums[(rr * U + u) * 2] = s1;
      sums[(rr * U + u) * 2 + 1] = s2;
    }
  }
  block_product<R>(dq, D, ds, Lk, k, D, n, D, unit);  // dq rows = dS k
  block_accumulate<R>(dk, D, ds, Lk, q, D, n, D);    // dk += dS^T q
  block_accumulate<R>(dv, Dv, p, Lk, dout, Dv, n, Dv);  // dv += P^T dO
}

void check_lengths(const at::Tensor& lengths, int64_t B, int64_t Lk) {
  TORCH_CHECK(lengths.device().is_cpu() && lengths.scalar_type() == at::kLong &&
                  lengths.is_contiguous() && lengths.dim() == 1 && lengths.size(0) == B,
              "lengths must be a contiguous int64 CPU tensor [B]");
  const int64_t* n = lengths.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK(n[b] >= 0 && n[b] <= Lk, "lengths must lie in [0, Lk]");
}

}  // namespace

// out [B, H, Lq, Dv] = softmax(q k^T + bias) v over all Lk keys, no mask, the keys taken
// key_chunk at a time with an online softmax (memory O(rows x key_chunk) per thread, any Lk).
// Each thread takes a block of up to 64 query rows of one task; each chunk of keys and its
// distances serve the block's rows, 8 at a time, head by head.
// q [B, H, Lq, D] (scaled), kT [B, H, D, Lk], v [B, H, Lk, Dv], cq [B, Lq, C],
// ckT [B, C, Lk], amp and rate [H, U].
void biased_attention(at::Tensor out, at::Tensor q, at::Tensor kT, at::Tensor v, at::Tensor cq,
                      at::Tensor ckT, at::Tensor amp, at::Tensor rate, bool root,
                      int64_t key_chunk) {
  check(out, 4, "out");
  check(q, 4, "q");
  check(kT, 4, "kT");
  check(v, 4, "v");
  check(cq, 3, "cq");
  check(ckT, 3, "ckT");
  check(amp, 2, "amp");
  check(rate, 2, "rate");
  const int64_t B = q.size(0), H = q.size(1), Lq = q.size(2), D = q.size(3), Lk = kT.size(3),
                Dv = v.size(3), C = cq.size(2), U = amp.size(1);
  TORCH_CHECK(Lk > 0 && kT.size(2) == D && v.size(2) == Lk && out.size(2) == Lq &&
                  out.size(3) == Dv && ckT.size(2) == Lk && amp.size(0) == H && key_chunk > 0,
              "biased_attention: inconsistent shapes");
  float* O = out.data_ptr<float>();
  const float* Q = q.data_ptr<float>();
  const float* KT = kT.data_ptr<float>();
  const float* V = v.data_ptr<float>();
  const float* CQ = cq.data_ptr<float>();
  const float* CK = ckT.data_ptr<float>();
  const float* A = amp.data_ptr<float>();
  const float* RT = rate.data_ptr<float>();
  const int64_t kc = key_chunk < Lk ? key_chunk : Lk;
  int64_t rows = 64;  // fewer rows per block where the blocks would not keep every thread busy
  while (rows > kRows && B * ((Lq + rows - 1) / rows) < 4 * at::get_num_threads()) rows /= 2;
  const int64_t blocks = (Lq + rows - 1) / rows;
  at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> r(rows * kc), s(kRows * kc), acc(H * rows * Dv), m(H * rows),
        l(H * rows);
    for (int64_t bk = begin; bk < end; ++bk) {
      const int64_t b = bk / blocks, i0 = (bk % blocks) * rows;
      const int64_t n_rows = i0 + rows <= Lq ? rows : Lq - i0;
      const float* qb = Q + b * H * Lq * D;
      const float* kb = KT + b * H * D * Lk;
      const float* vb = V + b * H * Lk * Dv;
      const float* ckb = CK + b * C * Lk;
      for (int64_t j0 = 0; j0 < Lk; j0 += kc) {
        const int64_t n = j0 + kc <= Lk ? kc : Lk - j0;
        for (int64_t i = 0; i < n_rows; ++i)
          row_distances(r.data() + i * kc, CQ + (b * Lq + i0 + i) * C, ckb + j0, C, Lk, n, root);
        for (int64_t h = 0; h < H; ++h) {
          const float* qh = qb + (h * Lq + i0) * D;
          const float* kh = kb + h * D * Lk;
          const float* vh = vb + h * Lk * Dv;
          float* ah = acc.data() + h * rows * Dv;
          float* mh = m.data() + h * rows;
          float* lh = l.data() + h * rows;
          int64_t i = 0;
          for (; i + kRows <= n_rows; i += kRows)
            attend_chunk<kRows>(ah + i * Dv, mh + i, lh + i, qh + i * D, kh, vh,
                                r.data() + i * kc, kc, A + h * U, RT + h * U, D, Lk, Dv, U, j0,
                                n, j0 == 0, s.data(), kc);
          for (; i < n_rows; ++i)
            attend_chunk<1>(ah + i * Dv, mh + i, lh + i, qh + i * D, kh, vh,
                            r.data() + i * kc, kc, A + h * U, RT + h * U, D, Lk, Dv, U, j0, n,
                            j0 == 0, s.data(), kc);
        }
      }
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < n_rows; ++i) {
          const float inv = 1.0f / l[h * rows + i];
          const float* arow = acc.data() + (h * rows + i) * Dv;
          float* orow = O + ((b * H + h) * Lq + i0 + i) * Dv;
#pragma omp simd
          for (int64_t c = 0; c < Dv; ++c) orow[c] = arow[c] * inv;
        }
    }
  });
}

// Training forward over the first lengths[b] keys of each task: out [B, H, Lq, Dv] and the
// probabilities p [B, H, Lq, Lk] (columns past lengths[b] are left as they are). A task
// without keys gets zeros. q [B, H, Lq, D] (scaled), kT [B, H, D, Lk], v [B, H, Lk, Dv],
// cq [B, Lq, C], ckT [B, C, Lk], amp and rate [H, U], lengths [B] int64.
void attention_train_forward(at::Tensor out, at::Tensor p, at::Tensor q, at::Tensor kT,
                             at::Tensor v, at::Tensor cq, at::Tensor ckT, at::Tensor amp,
                             at::Tensor rate, bool root, at::Tensor lengths) {
  check(out, 4, "out");
  check(p, 4, "p");
  check(q, 4, "q");
  check(kT, 4, "kT");
  check(v, 4, "v");
  check(cq, 3, "cq");
  check(ckT, 3, "ckT");
  check(amp, 2, "amp");
  check(rate, 2, "rate");
  const int64_t B = q.size(0), H = q.size(1), Lq = q.size(2), D = q.size(3), Lk = kT.size(3),
                Dv = v.size(3), C = cq.size(2), U = amp.size(1);
  TORCH_CHECK(kT.size(2) == D && v.size(2) == Lk && out.size(2) == Lq && out.size(3) == Dv &&
                  p.size(2) == Lq && p.size(3) == Lk && ckT.size(2) == Lk && amp.size(0) == H,
              "attention_train_forward: inconsistent shapes");
  check_lengths(lengths, B, Lk);
  const int64_t* N = lengths.data_ptr<int64_t>();
  float* O = out.data_ptr<float>();
  float* P = p.data_ptr<float>();
  const float* Q = q.data_ptr<float>();
  const float* KT = kT.data_ptr<float>();
  const float* V = v.data_ptr<float>();
  const float* CQ = cq.data_ptr<float>();
  const float* CK = ckT.data_ptr<float>();
  const float* A = amp.data_ptr<float>();
  const float* RT = rate.data_ptr<float>();
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> r(kRows * Lk);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H, n = N[b];
      float* o = O + bh * Lq * Dv;
      if (n == 0) {
        std::memset(o, 0, sizeof(float) * Lq * Dv);
        continue;
      }
      float* pb = P + bh * Lq * Lk;
      const float* qb = Q + bh * Lq * D;
      const float* kb = KT + bh * D * Lk;
      const float* vb = V + bh * Lk * Dv;
      const float* cqb = CQ + b * Lq * C;
      const float* ckb = CK + b * C * Lk;
      int64_t i = 0;
      for (; i + kRows <= Lq; i += kRows)
        train_forward_block<kRows>(o + i * Dv, pb + i * Lk, qb + i * D, kb, vb, cqb + i * C,
                                   ckb, A + h * U, RT + h * U, D, Lk, Dv, C, U, root, n,
                                   r.data());
      for (; i < Lq; ++i)
        train_forward_block<1>(o + i * Dv, pb + i * Lk, qb + i * D, kb, vb, cqb + i * C, ckb,
                               A + h * U, RT + h * U, D, Lk, Dv, C, U, root, n, r.data());
    }
  });
}

// Training backward of attention_train_forward. dq [B, H, Lq, D], dk [B, H, Lk, D] and
// dv [B, H, Lk, Dv] are written (zero past lengths[b]); returns the bias sums per row and
// rate, sum_j dS e_u and sum_j dS r e_u, [B, H, Lq, U, 2]. dout [B, H, Lq, Dv],
// delta = rowsum(dout * out) [B, H, Lq], q (scaled) [B, H, Lq, D], k [B, H, Lk, D],
// vT [B, H, Dv, Lk].
at::Tensor attention_train_backward(at::Tensor dq, at::Tensor dk, at::Tensor dv, at::Tensor p,
                                    at::Tensor dout, at::Tensor delta, at::Tensor q,
                                    at::Tensor k, at::Tensor vT, at::Tensor cq, at::Tensor ckT,
                                    at::Tensor rate, bool root, at::Tensor lengths) {
  check(dq, 4, "dq");
  check(dk, 4, "dk");
  check(dv, 4, "dv");
  check(p, 4, "p");
  check(dout, 4, "dout");
  check(delta, 3, "delta");
  check(q, 4, "q");
  check(k, 4, "k");
  check(vT, 4, "vT");
  check(cq, 3, "cq");
  check(ckT, 3, "ckT");
  check(rate, 2, "rate");
  const int64_t B = q.size(0), H = q.size(1), Lq = q.size(2), D = q.size(3), Lk = k.size(2),
                Dv = vT.size(2), C = cq.size(2), U = rate.size(1);
  TORCH_CHECK(k.size(3) == D && vT.size(3) == Lk && dout.size(3) == Dv && p.size(3) == Lk &&
                  dq.size(2) == Lq && dk.size(2) == Lk && dv.size(3) == Dv,
              "attention_train_backward: inconsistent shapes");
  check_lengths(lengths, B, Lk);
  at::Tensor sums = at::zeros({B, H, Lq, U, 2}, p.options());
  dk.zero_();
  dv.zero_();
  const int64_t* N = lengths.data_ptr<int64_t>();
  float* DQ = dq.data_ptr<float>();
  float* DK = dk.data_ptr<float>();
  float* DV = dv.data_ptr<float>();
  float* S = sums.data_ptr<float>();
  const float* P = p.data_ptr<float>();
  const float* DO = dout.data_ptr<float>();
  const float* DL = delta.data_ptr<float>();
  const float* Q = q.data_ptr<float>();
  const float* K = k.data_ptr<float>();
  const float* VT = vT.data_ptr<float>();
  const float* CQ = cq.data_ptr<float>();
  const float* CK = ckT.data_ptr<float>();
  const float* RT = rate.data_ptr<float>();
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> r(kRows * Lk), ds(kRows * Lk);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H, n = N[b];
      float* dqb = DQ + bh * Lq * D;
      if (n == 0) {
        std::memset(dqb, 0, sizeof(float) * Lq * D);
        continue;
      }
      float* dkb = DK + bh * Lk * D;
      float* dvb = DV + bh * Lk * Dv;
      float* sb = S + bh * Lq * U * 2;
      const float* pb = P + bh * Lq * Lk;
      const float* dob = DO + bh * Lq * Dv;
      const float* dlb = DL + bh * Lq;
      const float* qb = Q + bh * Lq * D;
      const float* kb = K + bh * Lk * D;
      const float* vb = VT + bh * Dv * Lk;
      const float* cqb = CQ + b * Lq * C;
      const float* ckb = CK + b * C * Lk;
      const float* rt = RT + h * U;
      int64_t i = 0;
      for (; i + kRows <= Lq; i += kRows)
        train_backward_block<kRows>(dqb + i * D, dkb, dvb, sb + i * U * 2, pb + i * Lk,
                                    dob + i * Dv, dlb + i, qb + i * D, kb, vb, cqb + i * C, ckb,
                                    rt, D, Lk, Dv, C, U, root, n, r.data(), ds.data());
      for (; i < Lq; ++i)
        train_backward_block<1>(dqb + i * D, dkb, dvb, sb + i * U * 2, pb + i * Lk,
                                dob + i * Dv, dlb + i, qb + i * D, kb, vb, cqb + i * C, ckb, rt,
                                D, Lk, Dv, C, U, root, n, r.data(), ds.data());
    }
  });
  return sums;
}
