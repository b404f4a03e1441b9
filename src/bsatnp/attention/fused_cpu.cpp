// Fused CPU kernels of biased attention (bsatnp.attention.fused_cpu).
//
// In training the matrix products stay with BLAS; these fuse what lies between them, one
// query row at a time, so each row's scores stay in L1:
//   forward:  P = softmax(S + bias), bias[j] = sum_u amp[u] * exp(-rate[u] * r(q_i, k_j)),
//             r = |q_i - k_j|^2 (rbf) or |q_i - k_j| (exponential), in place over S;
//   backward: dS = P * (dP - delta_i), in place over dP, and per row the sums
//             sum_j dS_ij * e_u(r_ij) and sum_j dS_ij * r_ij * e_u(r_ij) that give the bias
//             parameters' gradients.
// In inference one kernel does the whole attention, a block of query rows at a time:
// q k^T, the bias, the softmax and P v, with the block's scores in L1/L2 and the head's
// keys and values in L2 (biased_attention).
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

// Distances of query row i of task b to every key: r[j] for j < Lk.
inline void row_distances(float* r, const float* cq, const float* ckT, int64_t C, int64_t Lk,
                          bool root) {
  for (int64_t j = 0; j < Lk; ++j) r[j] = 0.0f;
  for (int64_t c = 0; c < C; ++c) {
    const float qc = cq[c];
    const float* kc = ckT + c * Lk;
#pragma omp simd
    for (int64_t j = 0; j < Lk; ++j) {
      const float d = qc - kc[j];
      r[j] += d * d;
    }
  }
  if (root) {
#pragma omp simd
    for (int64_t j = 0; j < Lk; ++j) r[j] = std::sqrt(r[j]);
  }
}

void check(const at::Tensor& t, int64_t dim, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous() &&
                  t.dim() == dim,
              name, " must be a contiguous float32 CPU tensor with ", dim, " dimensions");
}

}  // namespace

// scores [B, H, Lq, Lk] in place: softmax(scores + bias) over the keys.
// cq [B, Lq, C], ckT [B, C, Lk], amp and rate [H, U].
void bias_softmax(at::Tensor scores, at::Tensor cq, at::Tensor ckT, at::Tensor amp,
                  at::Tensor rate, bool root) {
  check(scores, 4, "scores");
  check(cq, 3, "cq");
  check(ckT, 3, "ckT");
  check(amp, 2, "amp");
  check(rate, 2, "rate");
  const int64_t B = scores.size(0), H = scores.size(1), Lq = scores.size(2),
                Lk = scores.size(3), C = cq.size(2), U = amp.size(1);
  float* S = scores.data_ptr<float>();
  const float* Q = cq.data_ptr<float>();
  const float* K = ckT.data_ptr<float>();
  const float* A = amp.data_ptr<float>();
  const float* R = rate.data_ptr<float>();
  // Rows ordered (b, i, h): the heads of one query share its distances.
  at::parallel_for(0, B * Lq, 8, [&](int64_t begin, int64_t end) {
    std::vector<float> r(Lk);
    for (int64_t bi = begin; bi < end; ++bi) {
      const int64_t b = bi / Lq, i = bi % Lq;
      row_distances(r.data(), Q + (b * Lq + i) * C, K + b * C * Lk, C, Lk, root);
      for (int64_t h = 0; h < H; ++h) {
        float* s = S + ((b * H + h) * Lq + i) * Lk;
        for (int64_t u = 0; u < U; ++u) {
          const float a = A[h * U + u], minus_rate = -R[h * U + u];
          if (a == 0.0f) continue;
#pragma omp simd
          for (int64_t j = 0; j < Lk; ++j) s[j] += a * exp_clamped(minus_rate * r[j]);
        }
        float m = s[0];
#pragma omp simd reduction(max : m)
        for (int64_t j = 1; j < Lk; ++j) m = s[j] > m ? s[j] : m;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < Lk; ++j) {
          const float e = exp_clamped(s[j] - m);
          s[j] = e;
          sum += e;
        }
        const float inv = 1.0f / sum;
#pragma omp simd
        for (int64_t j = 0; j < Lk; ++j) s[j] *= inv;
      }
    }
  });
}

// dp [B, H, Lq, Lk] in place: dS = p * (dp - delta). Returns per row (b, h, i) and rate u the
// sums of dS * e_u and dS * r * e_u, [B, H, Lq, U, 2].
at::Tensor bias_softmax_backward(at::Tensor p, at::Tensor dp, at::Tensor delta, at::Tensor cq,
                                 at::Tensor ckT, at::Tensor rate, bool root) {
  check(p, 4, "p");
  check(dp, 4, "dp");
  check(delta, 3, "delta");
  check(cq, 3, "cq");
  check(ckT, 3, "ckT");
  check(rate, 2, "rate");
  const int64_t B = p.size(0), H = p.size(1), Lq = p.size(2), Lk = p.size(3), C = cq.size(2),
                U = rate.size(1);
  at::Tensor sums = at::zeros({B, H, Lq, U, 2}, p.options());
  const float* P = p.data_ptr<float>();
  float* D = dp.data_ptr<float>();
  const float* Dl = delta.data_ptr<float>();
  const float* Q = cq.data_ptr<float>();
  const float* K = ckT.data_ptr<float>();
  const float* R = rate.data_ptr<float>();
  float* Out = sums.data_ptr<float>();
  at::parallel_for(0, B * Lq, 8, [&](int64_t begin, int64_t end) {
    std::vector<float> r(Lk);
    for (int64_t bi = begin; bi < end; ++bi) {
      const int64_t b = bi / Lq, i = bi % Lq;
      row_distances(r.data(), Q + (b * Lq + i) * C, K + b * C * Lk, C, Lk, root);
      for (int64_t h = 0; h < H; ++h) {
        const int64_t row = (b * H + h) * Lq + i;
        const float* pr = P + row * Lk;
        float* ds = D + row * Lk;
        const float dl = Dl[row];
#pragma omp simd
        for (int64_t j = 0; j < Lk; ++j) ds[j] = pr[j] * (ds[j] - dl);
        for (int64_t u = 0; u < U; ++u) {
          const float minus_rate = -R[h * U + u];
          float s1 = 0.0f, s2 = 0.0f;
#pragma omp simd reduction(+ : s1, s2)
          for (int64_t j = 0; j < Lk; ++j) {
            const float t = ds[j] * exp_clamped(minus_rate * r[j]);
            s1 += t;
            s2 += t * r[j];
          }
          Out[(row * U + u) * 2] = s1;
          Out[(row * U + u) * 2 + 1] = s2;
        }
      }
    }
  });
  return sums;
}

namespace {

// 16 floats: one AVX-512 register (two AVX2 registers where the machine has no AVX-512).
typedef float vf16 __attribute__((vector_size(64)));

inline vf16 load16(const float* p) {
  vf16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline void store16(float* p, const vf16& v) { std::memcpy(p, &v, sizeof v); }

// s[r * ld + j] = sum_d q[r * D + d] * kT[d * Lk + j] for R rows and every key j.
template <int R>
void block_scores(float* s, int64_t ld, const float* q, const float* kT, int64_t D,
                  int64_t Lk) {
  int64_t j0 = 0;
  for (; j0 + 32 <= Lk; j0 += 32) {
    vf16 acc[R][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = vf16{};
    for (int64_t d = 0; d < D; ++d) {
      const vf16 k0 = load16(kT + d * Lk + j0), k1 = load16(kT + d * Lk + j0 + 16);
      for (int r = 0; r < R; ++r) {
        const float qv = q[r * D + d];
        acc[r][0] += qv * k0;
        acc[r][1] += qv * k1;
      }
    }
    for (int r = 0; r < R; ++r) {
      store16(s + r * ld + j0, acc[r][0]);
      store16(s + r * ld + j0 + 16, acc[r][1]);
    }
  }
  for (; j0 < Lk; ++j0) {
    for (int r = 0; r < R; ++r) {
      float acc = 0.0f;
      for (int64_t d = 0; d < D; ++d) acc += q[r * D + d] * kT[d * Lk + j0];
      s[r * ld + j0] = acc;
    }
  }
}

// o[r * Dv + c] = scale[r] * sum_j p[r * ld + j] * v[j * Dv + c] for R rows.
template <int R>
void block_values(float* o, const float* p, int64_t ld, const float* v, int64_t Lk, int64_t Dv,
                  const float* scale) {
  int64_t c0 = 0;
  for (; c0 + 32 <= Dv; c0 += 32) {
    vf16 acc[R][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = vf16{};
    for (int64_t j = 0; j < Lk; ++j) {
      const vf16 v0 = load16(v + j * Dv + c0), v1 = load16(v + j * Dv + c0 + 16);
      for (int r = 0; r < R; ++r) {
        const float pv = p[r * ld + j];
        acc[r][0] += pv * v0;
        acc[r][1] += pv * v1;
      }
    }
    for (int r = 0; r < R; ++r) {
      store16(o + r * Dv + c0, scale[r] * acc[r][0]);
      store16(o + r * Dv + c0 + 16, scale[r] * acc[r][1]);
    }
  }
  for (; c0 < Dv; ++c0) {
    for (int r = 0; r < R; ++r) {
      float acc = 0.0f;
      for (int64_t j = 0; j < Lk; ++j) acc += p[r * ld + j] * v[j * Dv + c0];
      o[r * Dv + c0] = scale[r] * acc;
    }
  }
}

// s[j] <- exp(s[j] + bias[j] - max) over one row; returns 1 / sum.
inline float row_bias_exp(float* s, const float* r, const float* amp, const float* rate,
                          int64_t U, int64_t Lk) {
  for (int64_t u = 0; u < U; ++u) {
    const float a = amp[u], minus_rate = -rate[u];
    if (a == 0.0f) continue;
#pragma omp simd
    for (int64_t j = 0; j < Lk; ++j) s[j] += a * exp_clamped(minus_rate * r[j]);
  }
  float m = s[0];
#pragma omp simd reduction(max : m)
  for (int64_t j = 1; j < Lk; ++j) m = s[j] > m ? s[j] : m;
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < Lk; ++j) {
    const float e = exp_clamped(s[j] - m);
    s[j] = e;
    sum += e;
  }
  return 1.0f / sum;
}

template <int R>
void attend_block(float* out, const float* q, const float* kT, const float* v, const float* cq,
                  const float* ckT, const float* amp, const float* rate, int64_t H,
                  int64_t Lq, int64_t D, int64_t Lk, int64_t Dv, int64_t C, int64_t U,
                  bool root, int64_t i0, float* r, float* s) {
  for (int rr = 0; rr < R; ++rr)
    row_distances(r + rr * Lk, cq + (i0 + rr) * C, ckT, C, Lk, root);
  float inv[R];
  for (int64_t h = 0; h < H; ++h) {
    const float* qh = q + (h * Lq + i0) * D;
    block_scores<R>(s, Lk, qh, kT + h * D * Lk, D, Lk);
    for (int rr = 0; rr < R; ++rr)
      inv[rr] = row_bias_exp(s + rr * Lk, r + rr * Lk, amp + h * U, rate + h * U, U, Lk);
    block_values<R>(out + (h * Lq + i0) * Dv, s, Lk, v + h * Lk * Dv, Lk, Dv, inv);
  }
}

constexpr int kRows = 8;  // query rows per block: the keys and values are read once per block

}  // namespace

// out [B, H, Lq, Dv] = softmax(q k^T + bias) v over all Lk keys, no mask.
// q [B, H, Lq, D] (scaled), kT [B, H, D, Lk], v [B, H, Lk, Dv], cq [B, Lq, C],
// ckT [B, C, Lk], amp and rate [H, U].
void biased_attention(at::Tensor out, at::Tensor q, at::Tensor kT, at::Tensor v, at::Tensor cq,
                      at::Tensor ckT, at::Tensor amp, at::Tensor rate, bool root) {
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
                  out.size(3) == Dv && ckT.size(2) == Lk && amp.size(0) == H,
              "biased_attention: inconsistent shapes");
  float* O = out.data_ptr<float>();
  const float* Q = q.data_ptr<float>();
  const float* KT = kT.data_ptr<float>();
  const float* V = v.data_ptr<float>();
  const float* CQ = cq.data_ptr<float>();
  const float* CK = ckT.data_ptr<float>();
  const float* A = amp.data_ptr<float>();
  const float* RT = rate.data_ptr<float>();
  const int64_t blocks = (Lq + kRows - 1) / kRows;
  at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> r(kRows * Lk), s(kRows * Lk);
    for (int64_t bk = begin; bk < end; ++bk) {
      const int64_t b = bk / blocks, i0 = (bk % blocks) * kRows;
      float* ob = O + b * H * Lq * Dv;
      const float* qb = Q + b * H * Lq * D;
      const float* kb = KT + b * H * D * Lk;
      const float* vb = V + b * H * Lk * Dv;
      const float* cqb = CQ + b * Lq * C;
      const float* ckb = CK + b * C * Lk;
      if (i0 + kRows <= Lq) {
        attend_block<kRows>(ob, qb, kb, vb, cqb, ckb, A, RT, H, Lq, D, Lk, Dv, C, U, root, i0,
                            r.data(), s.data());
      } else {
        for (int64_t i = i0; i < Lq; ++i)
          attend_block<1>(ob, qb, kb, vb, cqb, ckb, A, RT, H, Lq, D, Lk, Dv, C, U, root, i,
                          r.data(), s.data());
      }
    }
  });
}
