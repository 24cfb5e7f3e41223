// Exponential moving averages along time on the CPU, stepped through time in the values' own layout.
// Loaded by momattn/cpu_scan.py (ctypes; built with the system's C++ compiler on first use, for this CPU).
//
// Values v (B, T, C) with unit channel stride (any batch and time strides), R decay rates per channel
// p (R, C) mixed by weights g (R, C), in float32 (float64 for float64 values):
//     s_t[r] = p[r] s_{t-1}[r] + v_t                    (per channel; s_{-1} = 0)
//     y_t    = sum_r g[r] s_t[r]                         (inclusive)
//     y_t    = sum_r g[r] p[r] s_{t-1}[r]                (strict: the sum over i < t)
// Backward, run in reverse time with lam_t[r] = p[r] lam_{t+1}[r] + gy_t and mu_t[r] = dlam_t[r]/dp[r]
// = p[r] mu_{t+1}[r] + lam_{t+1}[r]:
//     dv_t  = sum_r g[r] lam_t[r]          (inclusive)     sum_r g[r] p[r] lam_{t+1}[r]   (strict)
//     dg[r] = sum_t <v_t, lam_t[r]>        (inclusive)     sum_t <v_t, p[r] lam_{t+1}[r]> (strict)
//     dp[r] = g[r] sum_t <v_t, mu_t[r]>    (both)
// Every sum is carried in the accumulation type (float for bf16 and float32 values, double for float64): a bf16
// output is rounded once. A task is one batch row and a block of up to CB channels, stepped through every t:
// each step reads one contiguous stretch of a row (the scan is memory-bound for one rate) and updates the
// block's states, which stay in L1, with loops the compiler vectorises. Each task writes its own rows of the
// per-row rate gradients (B, R, C), which the caller sums, so results do not depend on the number of threads.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t CB = 256;  // channels per task (64, 128, 256 compared: 256 best for one rate, tied for eight)

struct bf16 { uint16_t bits; };

inline float load(const bf16 *x, int64_t i) {
  uint32_t u = uint32_t(x[i].bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float load(const float *x, int64_t i) { return x[i]; }
inline double load(const double *x, int64_t i) { return x[i]; }

inline void store(bf16 *x, int64_t i, float f) {  // round to nearest even; NaN stays NaN
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  x[i].bits = std::isnan(f) ? uint16_t(0x7FC0) : uint16_t(r);
}
inline void store(float *x, int64_t i, float f) { x[i] = f; }
inline void store(double *x, int64_t i, double f) { x[i] = f; }

constexpr int64_t PF = 8;  // rows ahead to prefetch (2, 4, 8 compared in a training step: 4 and 8 best, 8 for eight rates)

template <class T>
inline void prefetch_row(const T *row, int64_t n) {
  for (int64_t i = 0; i < n * int64_t(sizeof(T)); i += 64) __builtin_prefetch(reinterpret_cast<const char *>(row) + i);
}

// An addend's row (the attention output at one position, heads of D contiguous channels ah apart): channels
// c0 .. c0+n-1 head by head, prefetched or read into `out` (zeros where there is no addend). Forced inline: left
// to itself GCC calls them from the tiled forward, which then took ~20% longer.
template <class T>
__attribute__((always_inline)) inline void prefetch_heads(const T *row, int64_t ah, int64_t D, int64_t c0, int64_t n) {
  for (int64_t c = 0; c < n;) {
    const int64_t d = (c0 + c) % D, len = std::min(D - d, n - c);
    prefetch_row(row + ((c0 + c) / D) * ah + d, len);
    c += len;
  }
}

template <class T, class A>
__attribute__((always_inline)) inline void load_heads(A *out, const T *row, int64_t ah, int64_t D, int64_t c0, int64_t n) {
  if (!row) {
    std::fill(out, out + n, A(0));
    return;
  }
  for (int64_t c = 0; c < n;) {
    const int64_t d = (c0 + c) % D, len = std::min(D - d, n - c);
    const T *seg = row + ((c0 + c) / D) * ah + d;
    for (int64_t i = 0; i < len; ++i) out[c + i] = load(seg, i);
    c += len;
  }
}

// tasks 0..tasks-1 split into `threads` contiguous ranges, one per thread; a failed task is rethrown here. Built with
// OpenMP (where torch runs on GNU OpenMP, see cpu_scan._openmp), the threads are torch's own OpenMP team; otherwise
// the caller's thread takes the first range and the ranges of any thread that could not be started.
template <class F>
void parallel(int64_t tasks, int threads, F fn) {
  threads = int(std::max<int64_t>(1, std::min<int64_t>(threads, tasks)));
  std::atomic<bool> failed{false};
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < tasks; ++i) {
    try {
      fn(i);
    } catch (...) {
      failed = true;
    }
  }
#else
  auto range = [&](int w) {
    try {
      for (int64_t i = tasks * w / threads; i < tasks * (w + 1) / threads; ++i) fn(i);
    } catch (...) {
      failed = true;
    }
  };
  std::vector<std::thread> pool;
  int started = 1;
  try {
    pool.reserve(threads);
    for (; started < threads; ++started) pool.emplace_back(range, started);
  } catch (...) {
  }
  range(0);
  for (int w = started; w < threads; ++w) range(w);
  for (auto &t : pool) t.join();
#endif
  if (failed) throw std::runtime_error("ema_scan: a task failed");
}

// Several rates (multirate_ema, float32 and bf16 values): the per-channel loops above reload every state, rate
// and weight from L1 for each rate and step, which makes eight rates compute-bound on loads and stores. Instead,
// a task (batch row, CBF channels) goes through time in tiles of TT steps (the tile's rows converted to float
// once), and within a tile keeps G rates' states, rates and weights for W channels in registers through all TT
// steps; the G recurrences are independent chains, so each one's latency hides behind the others. The same
// operations in the same order as the loops above; where the compiler fuses a multiply and an add differently the
// results differ in the last bit (tests/test_cpu_scan.py compares both with float64). Alone, eight rates'
// backward with rate gradients: 2.85 -> 1.46 ms (bf16, B 16, T 256, C 256).
typedef float vecf __attribute__((vector_size(64)));
constexpr int64_t W = 16, CBF = 64, TT = 32, G = 4;

inline vecf vload(const float *p) {
  vecf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void vstore(float *p, vecf v) { std::memcpy(p, &v, sizeof v); }

// rates r0 .. r0+g-1 (g <= G) on channels cb .. cb+W-1 of a tile of tt steps: X (tt, n) values, ACC (tt, n) outputs
// (+= g s); states s (R, CBF); p, gw (R, C) from the block's first channel
template <int NG>
void forward_rates(const float *X, float *ACC, int64_t tt, int64_t n, int64_t cb, float *s, const float *p,
                   const float *gw, int64_t C, int64_t r0, bool strict) {
  vecf S[NG], P[NG], Q[NG];
  for (int j = 0; j < NG; ++j) {
    S[j] = vload(s + (r0 + j) * CBF + cb);
    P[j] = vload(p + (r0 + j) * C + cb);
    Q[j] = vload(gw + (r0 + j) * C + cb);
  }
  for (int64_t t = 0; t < tt; ++t) {
    const vecf x = vload(X + t * n + cb);
    vecf a = vload(ACC + t * n + cb);
    for (int j = 0; j < NG; ++j) {
      if (strict) {
        const vecf d = P[j] * S[j];
        a += Q[j] * d;
        S[j] = d + x;
      } else {
        S[j] = P[j] * S[j] + x;
        a += Q[j] * S[j];
      }
    }
    vstore(ACC + t * n + cb, a);
  }
  for (int j = 0; j < NG; ++j) vstore(s + (r0 + j) * CBF + cb, S[j]);
}

// the backward of the same, the tile's steps in reverse: E (tt, n) the output's gradient, ACC += the values'
template <int NG>
void backward_rates(const float *X, const float *E, float *ACC, int64_t tt, int64_t n, int64_t cb, float *lam,
                    float *mu, float *sdp, float *sdg, const float *p, const float *gw, int64_t C, int64_t r0,
                    bool strict) {
  vecf L[NG], M[NG], DP[NG], DG[NG], P[NG], Q[NG];
  for (int j = 0; j < NG; ++j) {
    const int64_t o = (r0 + j) * CBF + cb;
    L[j] = vload(lam + o), M[j] = vload(mu + o), DP[j] = vload(sdp + o), DG[j] = vload(sdg + o);
    P[j] = vload(p + (r0 + j) * C + cb);
    Q[j] = vload(gw + (r0 + j) * C + cb);
  }
  for (int64_t t = tt - 1; t >= 0; --t) {
    const vecf x = vload(X + t * n + cb), e = vload(E + t * n + cb);
    vecf a = vload(ACC + t * n + cb);
    for (int j = 0; j < NG; ++j) {
      if (strict) {  // L holds lam_{t+1}
        const vecf w = P[j] * L[j];
        a += Q[j] * w;
        M[j] = P[j] * M[j] + L[j];
        DG[j] += x * w;
        DP[j] += x * M[j];
        L[j] = w + e;
      } else {
        M[j] = P[j] * M[j] + L[j];
        L[j] = P[j] * L[j] + e;
        a += Q[j] * L[j];
        DG[j] += x * L[j];
        DP[j] += x * M[j];
      }
    }
    vstore(ACC + t * n + cb, a);
  }
  for (int j = 0; j < NG; ++j) {
    const int64_t o = (r0 + j) * CBF + cb;
    vstore(lam + o, L[j]), vstore(mu + o, M[j]), vstore(sdp + o, DP[j]), vstore(sdg + o, DG[j]);
  }
}

// every rate on every W-channel vector of a tile, G rates at a time: f(std::integral_constant<int, NG>, cb, r)
// for groups of NG = G, then 2, then 1 rates starting at rate r
template <class F>
inline void by_groups(int64_t R, int64_t n, F f) {
  for (int64_t cb = 0; cb < n; cb += W) {
    int64_t r = 0;
    for (; r + G <= R; r += G) f(std::integral_constant<int, G>{}, cb, r);
    for (; r + 2 <= R; r += 2) f(std::integral_constant<int, 2>{}, cb, r);
    for (; r < R; ++r) f(std::integral_constant<int, 1>{}, cb, r);
  }
}

template <class T>
void forward_tiled(const T *v, int64_t B, int64_t Tn, int64_t C, int64_t sb, int64_t st, const float *p,
                   const float *g, int64_t R, bool strict, T *y, const T *add, int64_t ab, int64_t at, int64_t ah,
                   int64_t D, const float *s0, float *sT, const int64_t *ss, int threads, int64_t yt) {
  const int64_t nblk = (C + CBF - 1) / CBF;
  parallel(B * nblk, threads, [&](int64_t task) {
    const int64_t b = task / nblk, c0 = (task % nblk) * CBF, n = std::min(CBF, C - c0);
    std::vector<float> s(R * CBF, 0.f), X(TT * n), ACC(TT * n);
    if (s0)
      for (int64_t r = 0; r < R; ++r)
        for (int64_t c = 0; c < n; ++c) s[r * CBF + c] = s0[b * ss[0] + (c0 + c) * ss[1] + r * ss[2]];
    const T *vb = v + b * sb + c0;
    T *yb = y + b * Tn * C + c0;
    for (int64_t t0 = 0; t0 < Tn; t0 += TT) {
      const int64_t tt = std::min(TT, Tn - t0);
      for (int64_t t = 0; t < tt; ++t) {
        if (t0 + t + TT < Tn) {  // the next tile's rows: strided rows defeat the hardware prefetcher
          prefetch_row(vb + (t0 + t + TT) * st, n);
          if (add) prefetch_heads(add + b * ab + (t0 + t + TT) * at, ah, D, c0, n);
        }
        float *xr = X.data() + t * n;
        for (int64_t c = 0; c < n; ++c) xr[c] = load(vb + (t0 + t) * st, c);
        load_heads(ACC.data() + t * n, add ? add + b * ab + (t0 + t) * at : nullptr, ah, D, c0, n);
      }
      const float *pb = p + c0, *gb = g + c0;
      by_groups(R, n, [&](auto ng, int64_t cb, int64_t r) {
        forward_rates<decltype(ng)::value>(X.data(), ACC.data(), tt, n, cb, s.data(), pb, gb, C, r, strict);
      });
      for (int64_t t = 0; t < tt; ++t)
        for (int64_t c = 0; c < n; ++c) store(yb + (t0 + t) * yt, c, ACC[t * n + c]);
    }
    if (sT)
      for (int64_t r = 0; r < R; ++r)
        for (int64_t c = 0; c < n; ++c) sT[b * ss[3] + (c0 + c) * ss[4] + r * ss[5]] = s[r * CBF + c];
  });
}

template <class T>
void backward_tiled(const T *v, int64_t sb, int64_t st, const T *gy, int64_t gb, int64_t gt, int64_t B, int64_t Tn,
                    int64_t C, const float *p, const float *g, int64_t R, bool strict, T *dv, float *dp, float *dg,
                    int threads) {
  const int64_t nblk = (C + CBF - 1) / CBF;
  parallel(B * nblk, threads, [&](int64_t task) {
    const int64_t b = task / nblk, c0 = (task % nblk) * CBF, n = std::min(CBF, C - c0);
    std::vector<float> lam(R * CBF, 0.f), mu(lam), sdp(lam), sdg(lam), X(TT * n), E(TT * n), ACC(TT * n);
    const T *vb = v + b * sb + c0, *eb = gy + b * gb + c0;
    T *db = dv + b * Tn * C + c0;
    for (int64_t t0 = (Tn - 1) / TT * TT; t0 >= 0; t0 -= TT) {
      const int64_t tt = std::min(TT, Tn - t0);
      for (int64_t t = tt - 1; t >= 0; --t) {
        if (t0 + t >= TT) {
          prefetch_row(eb + (t0 + t - TT) * gt, n);
          prefetch_row(vb + (t0 + t - TT) * st, n);
        }
        float *xr = X.data() + t * n, *er = E.data() + t * n;
        for (int64_t c = 0; c < n; ++c) er[c] = load(eb + (t0 + t) * gt, c);
        for (int64_t c = 0; c < n; ++c) xr[c] = load(vb + (t0 + t) * st, c);
      }
      std::fill(ACC.begin(), ACC.end(), 0.f);
      const float *pb = p + c0, *gw = g + c0;
      by_groups(R, n, [&](auto ng, int64_t cb, int64_t r) {
        backward_rates<decltype(ng)::value>(X.data(), E.data(), ACC.data(), tt, n, cb, lam.data(), mu.data(),
                                            sdp.data(), sdg.data(), pb, gw, C, r, strict);
      });
      for (int64_t t = 0; t < tt; ++t)
        for (int64_t c = 0; c < n; ++c) store(db + (t0 + t) * C, c, ACC[t * n + c]);
    }
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = 0; c < n; ++c) {
        dp[(b * R + r) * C + c0 + c] = g[r * C + c0 + c] * sdp[r * CBF + c];
        dg[(b * R + r) * C + c0 + c] = sdg[r * CBF + c];
      }
  });
}

// add (optional): a tensor added to the output as it is written (the attention output, read in place: element
// (b, t, c) at add[b * ab + t * at + (c / D) * ah + c % D], heads of D channels), summed in A before the rounding.
// s0, sT (optional): the states s_{-1} to start from (a prefix's; else 0) and s_{T-1} to leave, element (b, c, r) at
// s0[b * ss[0] + c * ss[1] + r * ss[2]] and sT[b * ss[3] + c * ss[4] + r * ss[5]].
template <class T, class A>
void forward(const T *v, int64_t B, int64_t Tn, int64_t C, int64_t sb, int64_t st, const A *p, const A *g,
             int64_t R, bool strict, T *y, const T *add, int64_t ab, int64_t at, int64_t ah, int64_t D,
             const A *s0, A *sT, const int64_t *ss, int threads, int64_t yt = 0) {
  yt = yt ? yt : C;  // y's time stride: C (y contiguous), or -C for a scan backward in time (see backward)
  if constexpr (std::is_same<A, float>::value)
    if (R >= 2 && C % W == 0)
      return forward_tiled<T>(v, B, Tn, C, sb, st, p, g, R, strict, y, add, ab, at, ah, D, s0, sT, ss, threads, yt);
  const int64_t nblk = (C + CB - 1) / CB;
  parallel(B * nblk, threads, [&](int64_t task) {
    const int64_t b = task / nblk, c0 = (task % nblk) * CB, n = std::min(CB, C - c0);
    std::vector<A> s(R * CB, A(0)), acc(CB), x(CB);
    if (s0)
      for (int64_t r = 0; r < R; ++r)
        for (int64_t c = 0; c < n; ++c) s[r * CB + c] = s0[b * ss[0] + (c0 + c) * ss[1] + r * ss[2]];
    const T *vb = v + b * sb + c0;
    T *yb = y + b * Tn * C + c0;  // row b's first position in time order (its last in memory when yt < 0)
    for (int64_t t = 0; t < Tn; ++t) {
      if (t + PF < Tn) {  // the rows PF steps ahead, one line at a time: strided rows defeat the prefetcher
        prefetch_row(vb + (t + PF) * st, n);
        if (add) prefetch_heads(add + b * ab + (t + PF) * at, ah, D, c0, n);
      }
      for (int64_t c = 0; c < n; ++c) x[c] = load(vb + t * st, c);
      load_heads(acc.data(), add ? add + b * ab + t * at : nullptr, ah, D, c0, n);
      for (int64_t r = 0; r < R; ++r) {
        A *sr = s.data() + r * CB;
        const A *pr = p + r * C + c0, *gr = g + r * C + c0;
        if (strict) {
          for (int64_t c = 0; c < n; ++c) {
            A d = pr[c] * sr[c];
            acc[c] += gr[c] * d;
            sr[c] = d + x[c];
          }
        } else {
          for (int64_t c = 0; c < n; ++c) {
            sr[c] = pr[c] * sr[c] + x[c];
            acc[c] += gr[c] * sr[c];
          }
        }
      }
      for (int64_t c = 0; c < n; ++c) store(yb + t * yt, c, acc[c]);
    }
    if (sT)
      for (int64_t r = 0; r < R; ++r)
        for (int64_t c = 0; c < n; ++c) sT[b * ss[3] + (c0 + c) * ss[4] + r * ss[5]] = s[r * CB + c];
  });
}

// dv (B, T, C) contiguous, in T; dp, dg (B, R, C) in A, or null when the rates need no gradient (v is not read).
// Without them, dv (the sums of lam) is the forward scan of gy run backward in time: gy read from its last row
// with time stride -gt, dv written from its last row with stride -C; and an addend (optional, laid out as the
// forward's: another gradient of the same values, e.g. attention's) is read the same way and added as dv is written.
template <class T, class A>
void backward(const T *v, int64_t sb, int64_t st, const T *gy, int64_t gb, int64_t gt, int64_t B, int64_t Tn,
              int64_t C, const A *p, const A *g, int64_t R, bool strict, T *dv, A *dp, A *dg, const T *add,
              int64_t ab, int64_t at, int64_t ah, int64_t D, int threads) {
  if (!dp) {
    forward<T, A>(gy + (Tn - 1) * gt, B, Tn, C, gb, -gt, p, g, R, strict, dv + (Tn - 1) * C,
                  add ? add + (Tn - 1) * at : nullptr, ab, -at, ah, D, nullptr, nullptr, nullptr, threads, -C);
    return;
  }
  if (add) throw std::invalid_argument("an addend only without rate gradients");
  if constexpr (std::is_same<A, float>::value)
    if (R >= 2 && C % W == 0)
      return backward_tiled<T>(v, sb, st, gy, gb, gt, B, Tn, C, p, g, R, strict, dv, dp, dg, threads);
  const int64_t nblk = (C + CB - 1) / CB;
  parallel(B * nblk, threads, [&](int64_t task) {
    const int64_t b = task / nblk, c0 = (task % nblk) * CB, n = std::min(CB, C - c0);
    std::vector<A> lam(R * CB, A(0)), mu(lam), sdp(lam), sdg(lam), acc(CB), x(CB), e(CB);
    const T *vb = v + b * sb + c0, *eb = gy + b * gb + c0;
    T *db = dv + b * Tn * C + c0;
    for (int64_t t = Tn - 1; t >= 0; --t) {
      if (t >= PF) {
        prefetch_row(eb + (t - PF) * gt, n);
        prefetch_row(vb + (t - PF) * st, n);
      }
      for (int64_t c = 0; c < n; ++c) e[c] = load(eb + t * gt, c);
      for (int64_t c = 0; c < n; ++c) x[c] = load(vb + t * st, c);
      std::fill(acc.begin(), acc.end(), A(0));
      for (int64_t r = 0; r < R; ++r) {
        A *lr = lam.data() + r * CB, *mr = mu.data() + r * CB, *dpr = sdp.data() + r * CB, *dgr = sdg.data() + r * CB;
        const A *pr = p + r * C + c0, *gr = g + r * C + c0;
        if (strict) {  // lr holds lam_{t+1}
          for (int64_t c = 0; c < n; ++c) {
            A w = pr[c] * lr[c];
            acc[c] += gr[c] * w;
            mr[c] = pr[c] * mr[c] + lr[c];
            dgr[c] += x[c] * w;
            dpr[c] += x[c] * mr[c];
            lr[c] = w + e[c];
          }
        } else {
          for (int64_t c = 0; c < n; ++c) {
            mr[c] = pr[c] * mr[c] + lr[c];
            lr[c] = pr[c] * lr[c] + e[c];
            acc[c] += gr[c] * lr[c];
            dgr[c] += x[c] * lr[c];
            dpr[c] += x[c] * mr[c];
          }
        }
      }
      for (int64_t c = 0; c < n; ++c) store(db + t * C, c, acc[c]);
    }
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = 0; c < n; ++c) {
        dp[(b * R + r) * C + c0 + c] = g[r * C + c0 + c] * sdp[r * CB + c];
        dg[(b * R + r) * C + c0 + c] = sdg[r * CB + c];
      }
  });
}

// The elementwise part of causal softmax attention's backward (momattn/cpu_attention.py), in place on two
// (nbh, t, t) buffers, one (batch, head) pair's t x t block after another: the raw scores s = q k^T become the
// probabilities p = exp(scale s - lse), and the probabilities' gradient dp = dO v^T becomes the scores' gradient
// ds = scale p (dp - delta), both 0 above the causal diagonal, where lse (nbh, t) is the forward's log-sum-exp and
// delta = rowsum(p dp) (see softmax_grad). Two passes over a row in float32 instead of the six or more full-size
// passes (casts, subtract, exp, mask, multiply) the same took in torch ops, which cost more than the matmuls.
inline float fast_exp(float x) {  // Cephes' expf polynomial, branch-free so that the loop vectorises; ~1 ulp
  float z = x > -87.0f ? x : -87.0f;  // NaN too: the conversion to int below must see a finite number
  z = z < 88.0f ? z : 88.0f;
  const float n = (z * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // rounded to an integer (1.5 * 2^23)
  const float r = z - n * 0.693359375f + n * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const int32_t e = (int32_t(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &e, 4);
  return x < -87.0f ? 0.0f : x == x ? y * two_n : x;  // NaN stays NaN
}

// s, dp: (nbh, rows, cols) scores and dO v^T of the queries offset .. offset + rows - 1 against keys 0 .. cols - 1;
// query i sees keys 0 .. i (causal), the rest of its row is set to 0. lse: (nbh, rows). s becomes p, normalised by
// its row's sum as computed (which is 1 up to the exp's and the rounding's error), and dp becomes
// ds = scale p (dp - delta) with delta = sum_j p_j dp_j of that p and of dp as stored (rounded to T): each row of ds
// then sums to ~0 as the exact gradient's does, and dv = p^T dO reads probabilities that sum to 1. Reviews found:
// delta as rowsum(dO * O) in float32 beside dp rounded to bf16 left dq and dk at 7e-3 at one key (a sequence's
// first position), where they are 0; on rows near one-hot the exp's own error, times |dp|, was most of ds
// (float32's dq 4e-6 against SDPA's 4e-7); an unnormalised p gave dv 2.5e-6 in float32 at a logit spread of 30.
template <class T>
void softmax_grad(T *__restrict__ s, T *__restrict__ dp, const float *lse, int64_t nbh, int64_t rows, int64_t cols,
                  int64_t offset, float scale, int threads) {
  parallel(nbh * rows, threads, [&](int64_t row) {  // row: pair row / rows, query offset + row % rows
    T *__restrict__ sr = s + row * cols, *__restrict__ gr = dp + row * cols;
    const int64_t lim = std::min(cols, row % rows + offset + 1);
    const float m = lse[row];
    float dl = 0.0f, sum = 0.0f;
    for (int64_t j = 0; j < lim; ++j) {
      store(sr, j, fast_exp(load(sr, j) * scale - m));
      dl += load(sr, j) * load(gr, j);
      sum += load(sr, j);
    }
    const float inv = sum > 0.0f ? 1.0f / sum : 1.0f;  // (a row of NaN passes through as NaN)
    dl *= inv;
    for (int64_t j = 0; j < lim; ++j) {
      store(sr, j, load(sr, j) * inv);
      store(gr, j, scale * load(sr, j) * (load(gr, j) - dl));
    }
    for (int64_t j = lim; j < cols; ++j) {
      store(sr, j, 0.0f);
      store(gr, j, 0.0f);
    }
  });
}

}  // namespace

// The exported functions return 0, 1 where a buffer (or, without OpenMP, a thread) could not be had, or 2 for a call
// the kernel does not take (no exception may cross into the caller's C frames); cpu_scan.py raises then. (libgomp ends the process where it cannot start a
// thread, as it does for torch's own ops.)
#define EMA_EXPORT(NAME, T, A)                                                                                  \
  extern "C" int NAME##_forward(const T *v, int64_t B, int64_t Tn, int64_t C, int64_t sb, int64_t st,          \
                                const A *p, const A *g, int64_t R, int strict, T *y, const T *add, int64_t ab,  \
                                int64_t at, int64_t ah, int64_t D, const A *s0, A *sT, const int64_t *ss,       \
                                int threads) {                                                                  \
    try {                                                                                                       \
      forward<T, A>(v, B, Tn, C, sb, st, p, g, R, strict != 0, y, add, ab, at, ah, D, s0, sT, ss, threads);    \
    } catch (...) {                                                                                             \
      return 1;                                                                                                 \
    }                                                                                                           \
    return 0;                                                                                                   \
  }                                                                                                             \
  extern "C" int NAME##_backward(const T *v, int64_t sb, int64_t st, const T *gy, int64_t gb, int64_t gt,       \
                                 int64_t B, int64_t Tn, int64_t C, const A *p, const A *g, int64_t R,           \
                                 int strict, T *dv, A *dp, A *dg, const T *add, int64_t ab, int64_t at,         \
                                 int64_t ah, int64_t D, int threads) {                                          \
    try {                                                                                                       \
      backward<T, A>(v, sb, st, gy, gb, gt, B, Tn, C, p, g, R, strict != 0, dv, dp, dg, add, ab, at, ah, D,     \
                     threads);                                                                                  \
    } catch (const std::invalid_argument &) {                                                                   \
      return 2;                                                                                                 \
    } catch (...) {                                                                                             \
      return 1;                                                                                                 \
    }                                                                                                           \
    return 0;                                                                                                   \
  }

EMA_EXPORT(ema_f32, float, float)
EMA_EXPORT(ema_f64, double, double)
EMA_EXPORT(ema_bf16, bf16, float)

#define ATTN_EXPORT(NAME, T)                                                                                    \
  extern "C" int NAME(T *s, T *dp, const float *lse, int64_t nbh, int64_t rows, int64_t cols, int64_t offset,  \
                      float scale, int threads) {                                                               \
    try {                                                                                                       \
      softmax_grad<T>(s, dp, lse, nbh, rows, cols, offset, scale, threads);                                     \
    } catch (...) {                                                                                             \
      return 1;                                                                                                 \
    }                                                                                                           \
    return 0;                                                                                                   \
  }

ATTN_EXPORT(attn_grad_f32, float)
ATTN_EXPORT(attn_grad_bf16, bf16)
