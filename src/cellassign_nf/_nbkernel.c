/* The fused CPU kernel of cellassign_nf (see kernels.py, the Python side, and docs/model.md
 * section 4): the log likelihood of CellAssign, the negative binomial terms with their RBF
 * inverse dispersion summed by cell type, forward and backward, one cell at a time.
 *
 * Per term (x, log_mu), with a[i] = exp(log_a[i]) and equally spaced centres v[i] = v0 + i h,
 * b = 1 / (2 h^2), t = (mu - v0) / h:
 *
 *   mu   = exp(log_mu)
 *   e[i] = exp(-b (mu - v[i])^2) = exp(-(t - i)^2 / 2)
 *   phi  = eps + sum_i a[i] e[i]
 *   term = lgamma(x + phi) - lgamma(phi) + phi log phi + x log_mu - (phi + x) log(phi + mu)
 *
 * Why it is fast: every loop is a plain loop over a block of terms with no branches and a length
 * that is a multiple of the vector width (rows are padded), so the compiler turns it into SIMD code
 * with no scalar remainder (AVX-512 or AVX2 where the CPU has it, chosen at run time); exp and log
 * are written out below in arithmetic the compiler can vectorise, and one division serves several
 * logs and reciprocals; the B exponentials of the RBF are two (e[i+1] = e[i] exp(t) exp(-(i + 1/2)));
 * lgamma and digamma differences come from the shift lgamma(z) = lgamma(z + 6) - log(z (z+1) ... (z+5))
 * and Stirling's series at z + 6, computed only for the non-zero counts of a block, packed together
 * (at x = 0 both differences are 0). Arithmetic is in double precision; inputs and outputs are float32.
 *
 * The module only does arithmetic on caller-owned memory given as addresses; kernels.py checks
 * shapes, dtypes and contiguity, and splits rows over threads.
 */
#ifndef NBKERNEL_MATH_ONLY
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#endif
#include <math.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 256     /* terms per block: every temporary of a block stays in L1 */
#define VEC 8         /* doubles in the widest vector (AVX-512): loops run over multiples of it (pad) */
#define SHIFT 6       /* lgamma / digamma shift: Stirling's series at z + 6, error < 1e-11 */
#define T_LIMIT 60.0  /* |t| beyond this: every e[i] < exp(-1300), i.e. 0 */

/* n rounded up to a multiple of VEC: a loop over whole vectors, no scalar remainder (a remainder
 * of a few terms costs as much as dozens of terms in vectors) */
#define PAD(n) (((n) + VEC - 1) / VEC * VEC)

/* every helper is inlined into the two entry points, so that each copy of those (AVX2 and the
 * baseline) gets its own SIMD code */
#define INLINE static inline __attribute__((always_inline))

#ifndef DISPATCH /* -DDISPATCH= builds one copy for the compiler's target (the tests of each copy) */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DISPATCH __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DISPATCH
#endif
#endif

/* ---- exp and log in vectorisable arithmetic (cf. Cephes / fdlibm), exp to 2e-10 relative, log to 1e-15 ---- */

INLINE double as_double(uint64_t u) { double d; memcpy(&d, &u, 8); return d; }
INLINE uint64_t as_bits(double d) { uint64_t u; memcpy(&u, &d, 8); return u; }

INLINE double vexp(double x) {
    const double magic = 6755399441055744.0; /* 1.5 * 2^52: adding it rounds to an integer */
    double xc = x < -708.0 ? -708.0 : (x > 709.0 ? 709.0 : x);
    double tn = xc * 1.4426950408889634 + magic;
    double n = tn - magic;
    double r = xc - n * 0.6931471803691238 - n * 1.9082149292705877e-10; /* |r| <= 0.347 */
    double p = 1.0 / 40320.0; /* Taylor to r^8: relative error < 2.1e-10, far below float32's */
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    uint64_t k = as_bits(tn) - as_bits(magic); /* n as a two's complement integer */
    double scale = as_double((k + 1023u) << 52);
    return x < -708.0 ? 0.0 : p * scale;
}

/* log x for x > 0 (normal) in two halves, so that several logs can share one division: the split
 * gives x = 2^e (1 + f) with f in [sqrt(1/2) - 1, sqrt(2) - 1]; the finish needs 1 / (2 + f). */
INLINE void log_split(double x, double *e, double *f) {
    uint64_t u = as_bits(x);
    double ex = as_double(0x4330000000000000ull | (u >> 52)) - 4503599627370496.0 - 1023.0;
    double m = as_double((u & 0x000FFFFFFFFFFFFFull) | 0x3FF0000000000000ull); /* [1, 2) */
    int big = m > 1.4142135623730951;
    *f = (big ? 0.5 * m : m) - 1.0;
    *e = big ? ex + 1.0 : ex;
}

INLINE double log_finish(double e, double f, double inv_2f) {
    double s = f * inv_2f; /* f / (2 + f) */
    double z = s * s, w = z * z;
    double t1 = w * (3.999999999940941908e-01 + w * (2.222219843214978396e-01 + w * 1.531383769920937332e-01));
    double t2 = z * (6.666666666666735130e-01 + w * (2.857142874366239149e-01 +
                     w * (1.818357216161805012e-01 + w * 1.479819860511658591e-01)));
    double hfsq = 0.5 * f * f;
    return e * 6.93147180369123816490e-01 - ((hfsq - (s * (hfsq + t1 + t2) + e * 1.90821492927058770002e-10)) - f);
}

/* two logs and a reciprocal for the price of one division: 1 / (2 + f_i) and 1 / y from
 * 1 / ((2 + f_0) (2 + f_1) y), the 2 + f_i lying in [1.7, 2.5]; written out in scalars so that the
 * loop stays SIMD */
INLINE void log2_recip(double x0, double x1, double y, double *l0, double *l1, double *inv_y) {
    double e0, e1, f0, f1;
    log_split(x0, &e0, &f0);
    log_split(x1, &e1, &f1);
    double d0 = 2.0 + f0, d1 = 2.0 + f1, d01 = d0 * d1;
    double r = 1.0 / (d01 * y);
    *l0 = log_finish(e0, f0, r * d1 * y);
    *l1 = log_finish(e1, f1, r * d0 * y);
    *inv_y = r * d01;
}

/* four logs and a reciprocal for the price of one division, as log2_recip */
INLINE void log4_recip(double x0, double x1, double x2, double x3, double y, double *l0, double *l1, double *l2,
                       double *l3, double *inv_y) {
    double e0, e1, e2, e3, f0, f1, f2, f3;
    log_split(x0, &e0, &f0);
    log_split(x1, &e1, &f1);
    log_split(x2, &e2, &f2);
    log_split(x3, &e3, &f3);
    double d0 = 2.0 + f0, d1 = 2.0 + f1, d2 = 2.0 + f2, d3 = 2.0 + f3, d01 = d0 * d1, d23 = d2 * d3;
    double r = 1.0 / (d01 * d23 * y), ry = r * y;
    *l0 = log_finish(e0, f0, ry * d1 * d23);
    *l1 = log_finish(e1, f1, ry * d0 * d23);
    *l2 = log_finish(e2, f2, ry * d01 * d3);
    *l3 = log_finish(e3, f3, ry * d01 * d2);
    *inv_y = r * d01 * d23;
}

/* ---- the model's pieces, on one block of n <= BLOCK terms ---- */

typedef struct {
    const double *a; /* a[i] = exp(log_a[i]), B of them */
    const double *c; /* c[i] = exp(-(i + 1/2)): e[i+1] = e[i] exp(t) c[i] */
    int B;
    double v0, inv_h, eps;
} Rbf;

/* mu, t, e[0] = exp(-t^2/2) and r = exp(t) for a block */
INLINE void rbf_start(const float *log_mu, int n, const Rbf *p, double *mu, double *t, double *e, double *r) {
#pragma omp simd
    for (int j = 0; j < n; j++) {
        double m = vexp((double)log_mu[j]);
        double tj = (m - p->v0) * p->inv_h;
        tj = tj < -T_LIMIT ? -T_LIMIT : (tj > T_LIMIT ? T_LIMIT : tj);
        mu[j] = m;
        t[j] = tj;
        e[j] = vexp(-0.5 * tj * tj);
        r[j] = vexp(tj);
    }
}

/* phi = eps + sum a[i] e[i] and d phi / d mu = -(1/h) sum a[i] e[i] (t - i) */
INLINE void rbf_phi(int n, const Rbf *p, const double *t, double *e, const double *r, double *phi, double *dphi) {
    double s1[BLOCK];
#pragma omp simd
    for (int j = 0; j < n; j++) { phi[j] = 0.0; s1[j] = 0.0; }
    for (int i = 0; i < p->B; i++) {
        const double ai = p->a[i], ci = p->c[i], di = (double)i;
#pragma omp simd
        for (int j = 0; j < n; j++) {
            double w = ai * e[j];
            phi[j] += w;
            s1[j] += w * di;
            e[j] *= r[j] * ci;
        }
    }
#pragma omp simd
    for (int j = 0; j < n; j++) {
        dphi[j] = -(t[j] * phi[j] - s1[j]) * p->inv_h;
        phi[j] += p->eps;
    }
}

/* Stirling's series without its constant: lgamma(w) - log(2 pi) / 2 for w >= SHIFT (next term
 * 691 / (360360 w^11) < 6e-12); iw = 1 / w */
INLINE double stirling(double w, double log_w, double iw) {
    double iw2 = iw * iw;
    return (w - 0.5) * log_w - w +
           iw * (1.0 / 12 - iw2 * (1.0 / 360 - iw2 * (1.0 / 1260 - iw2 * (1.0 / 1680 - iw2 / 1188))));
}

/* digamma(w) for w >= SHIFT (asymptotic series; next term 691 / (32760 w^12) < 1e-11) */
INLINE double psi(double log_w, double iw) {
    double iw2 = iw * iw;
    return log_w - 0.5 * iw - iw2 * (1.0 / 12 - iw2 * (1.0 / 120 - iw2 * (1.0 / 252 - iw2 * (1.0 / 240 - iw2 / 132))));
}

/* The NB term splits into a part that only a non-zero count has, which depends on x and phi alone,
 *   lg = lgamma(x + phi) - lgamma(phi),   dg = d lg / d phi = digamma(x + phi) - digamma(phi),
 * both 0 at x = 0 (a third of the terms or more in typical data), and the rest:
 *   term            = lg + phi log phi + x log_mu - (phi + x) log(phi + mu)
 *   d term / d phi  = dg + log phi + 1 - log(phi + mu) - (phi + x) / (phi + mu)
 *   d term / d log_mu = x + mu (d term / d phi * d phi / d mu - (phi + x) / (phi + mu))
 * nb_count computes lg and dg over the block's non-zero counts packed together, nb_terms the rest
 * over the whole block: both loops run on whole SIMD vectors, and a zero count skips the rising
 * products, Stirling, psi, four logs and a division. */

/* the rising product p = z (z+1) ... (z + SHIFT - 1) and its derivative dp / dz */
INLINE void rising(double z, double *p, double *dp) {
    double pz = 1.0, dpz = 0.0;
    for (int s = 0; s < SHIFT; s++) {
        dpz = dpz * (z + s) + pz;
        pz *= z + s;
    }
    *p = pz;
    *dp = dpz;
}

/* lg and dg (above) for k packed terms with x > 0, from the shift
 * lgamma(z) = lgamma(z + 6) - log(z (z+1) ... (z+5)) and Stirling's series at z + 6: the rising
 * products p1 (from x + phi), p2 (from phi) and their derivatives; one division gives 1/w1, 1/w2,
 * 1/(p1 p2) and the four logs. The products stay far from overflow for x and phi below 1e15. */
INLINE void nb_count(int k, const double *x, const double *phi, double *lg, double *dg, const int need_grad) {
#pragma omp simd
    for (int j = 0; j < k; j++) {
        double ph = phi[j], z1 = x[j] + ph, p1, dp1, p2, dp2;
        rising(z1, &p1, &dp1);
        rising(ph, &p2, &dp2);
        double w1 = z1 + SHIFT, w2 = ph + SHIFT, ww = w1 * w2, pp = p1 * p2, inv, lw1, lw2, lp1, lp2;
        log4_recip(w1, w2, p1, p2, ww * pp, &lw1, &lw2, &lp1, &lp2, &inv);
        double iw1 = inv * pp * w2, iw2 = inv * pp * w1;
        lg[j] = stirling(w1, lw1, iw1) - stirling(w2, lw2, iw2) - (lp1 - lp2);
        if (need_grad) dg[j] = psi(lw1, iw1) - psi(lw2, iw2) - (dp1 * p2 - dp2 * p1) * inv * ww;
    }
}

/* the terms of a block and, with need_grad, d term / d log_mu and d term / d phi, given lg and dg
 * (0 at x = 0); one division gives 1/(phi + mu) and the two logs */
INLINE void nb_terms(int n, const float *x, const float *log_mu, const double *mu, const double *phi,
                     const double *dphi, const double *lg, const double *dg, double *terms, float *d_log_mu,
                     float *d_phi, const int need_grad) {
#pragma omp simd
    for (int j = 0; j < n; j++) {
        double xj = (double)x[j], ph = phi[j], m = mu[j], pm = ph + m, log_phi, log_pm, inv_pm;
        log2_recip(ph, pm, pm, &log_phi, &log_pm, &inv_pm);
        terms[j] = lg[j] + ph * log_phi + xj * (double)log_mu[j] - (ph + xj) * log_pm;
        if (need_grad) {
            double ratio = (ph + xj) * inv_pm;
            double dt_dphi = dg[j] + log_phi + 1.0 - log_pm - ratio;
            d_phi[j] = (float)dt_dphi;
            d_log_mu[j] = (float)(xj + m * (dt_dphi * dphi[j] - ratio));
        }
    }
}

/* the block's non-zero counts packed: their positions idx, counts xs and phi ps; returns how many.
 * No branch: every position is written, and only a non-zero count moves the end on. */
INLINE int pack_nonzero(const float *x, const double *phi, int n, int *idx, double *xs, double *ps) {
    int k = 0;
    for (int j = 0; j < n; j++) {
        idx[k] = j;
        k += x[j] != 0.0f;
    }
    for (int i = 0; i < k; i++) {
        xs[i] = (double)x[idx[i]];
        ps[i] = phi[idx[i]];
    }
    for (int i = k; i < PAD(k); i++) { /* padding: any valid term */
        xs[i] = 1.0;
        ps[i] = 1.0;
    }
    return k;
}

/* every term of a block (n a multiple of VEC): lg and dg over the packed non-zero counts,
 * scattered into arrays of zeros, then the rest over the whole block */
INLINE void nb_block(const float *x, const float *log_mu, int n, const double *mu, const double *phi,
                     const double *dphi, double *terms, float *d_log_mu, float *d_phi, const int need_grad) {
    int idx[BLOCK];
    double xs[BLOCK], ps[BLOCK], lgs[BLOCK], dgs[BLOCK], lg[BLOCK], dg[BLOCK];
    int k = pack_nonzero(x, phi, n, idx, xs, ps);
    nb_count(PAD(k), xs, ps, lgs, dgs, need_grad);
#pragma omp simd
    for (int j = 0; j < n; j++) { lg[j] = 0.0; dg[j] = 0.0; }
    for (int i = 0; i < k; i++) lg[idx[i]] = lgs[i];
    if (need_grad)
        for (int i = 0; i < k; i++) dg[idx[i]] = dgs[i];
    nb_terms(n, x, log_mu, mu, phi, dphi, lg, dg, terms, d_log_mu, d_phi, need_grad);
}

/* acc[i] += sum_j g_phi[j] e[i](t_j) (the a[i] factor is applied by the caller) */
INLINE void rbf_reduce(int n, const Rbf *p, double *e, const double *r, const double *g_phi, double *acc) {
    for (int i = 0; i < p->B; i++) {
        const double ci = p->c[i];
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (int j = 0; j < n; j++) {
            s += g_phi[j] * e[j];
            e[j] *= r[j] * ci;
        }
        acc[i] += s;
    }
}

#ifndef NBKERNEL_MATH_ONLY /* benchmarks/roofline.c includes only the arithmetic above */

/* ---- the model's layout: G base columns and K marker columns per cell ----
 *
 * Column j < G is gene j; column G + k is marker entry k (gene mg[k], type mt[k]). For cell n:
 *   log_mu[n, j] = offset[n, gene(j)] + col[j]
 *   out[n, c]    = sum_j term[n, j] W[j, c],  W = [1 - rho; onehot(mt)]
 *                = sum_{g < G} term[n, g] + sum_{k: mt[k] = c} (term[n, G + k] - term[n, mg[k]])
 * so neither the N x (G + K) inputs nor the terms are ever stored, and the product with W costs
 * G + K additions per cell instead of (G + K) C multiply-adds. */

typedef struct {
    Py_ssize_t G, K, C;
    const int64_t *mg, *mt;
    const float *col;
} Layout;

/* a row of G per-gene values in column order: out[j] = row[gene(j)] (+ col[j] with add_col) */
INLINE void gather_row(const float *row, const Layout *L, int add_col, float *out) {
    for (Py_ssize_t g = 0; g < L->G; g++) out[g] = row[g] + (add_col ? L->col[g] : 0.0f);
    for (Py_ssize_t k = 0; k < L->K; k++) out[L->G + k] = row[L->mg[k]] + (add_col ? L->col[L->G + k] : 0.0f);
}

DISPATCH
static void forward_rows(const float *x, const float *offset, Py_ssize_t lo, Py_ssize_t hi, const Layout *L,
                         const Rbf *p, float *out, float *d_log_mu, float *d_phi, int need_grad, float *work,
                         double *dwork) {
    double mu[BLOCK], t[BLOCK], e[BLOCK], r[BLOCK], phi[BLOCK], dphi[BLOCK];
    float dl[BLOCK], dp[BLOCK];
    const Py_ssize_t W = L->G + L->K, Wp = PAD(W);
    float *xs = work, *lms = work + Wp;
    double *terms = dwork, *o = dwork + Wp;
    for (Py_ssize_t n = lo; n < hi; n++) {
        gather_row(x + n * L->G, L, 0, xs);        /* counts */
        gather_row(offset + n * L->G, L, 1, lms);  /* log means */
        for (Py_ssize_t j = W; j < Wp; j++) xs[j] = lms[j] = 0.0f; /* padding: x = 0, mu = 1 */
        for (Py_ssize_t s = 0; s < W; s += BLOCK) {
            int m = (int)(W - s < BLOCK ? W - s : BLOCK), mp = PAD(m);
            rbf_start(lms + s, mp, p, mu, t, e, r);
            rbf_phi(mp, p, t, e, r, phi, dphi);
            if (need_grad) { /* two copies of the loop, each without a branch */
                nb_block(xs + s, lms + s, mp, mu, phi, dphi, terms + s, dl, dp, 1);
                memcpy(d_log_mu + n * W + s, dl, m * sizeof(float));
                memcpy(d_phi + n * W + s, dp, m * sizeof(float));
            } else {
                nb_block(xs + s, lms + s, mp, mu, phi, dphi, terms + s, dl, dp, 0);
            }
        }
        double base = 0.0;
        for (Py_ssize_t g = 0; g < L->G; g++) base += terms[g];
        for (Py_ssize_t c = 0; c < L->C; c++) o[c] = base;
        for (Py_ssize_t k = 0; k < L->K; k++) o[L->mt[k]] += terms[L->G + k] - terms[L->mg[k]];
        for (Py_ssize_t c = 0; c < L->C; c++) out[n * L->C + c] = (float)o[c];
    }
}

/* d loss / d offset (M x G), partial sums of d loss / d col (W, added to col_acc) and of
 * sum_n g_phi e[i] (B, added to rbf_acc), for rows [lo, hi) */
DISPATCH
static void backward_rows(const float *grad_out, const float *offset, const float *d_log_mu, const float *d_phi,
                          Py_ssize_t lo, Py_ssize_t hi, const Layout *L, const Rbf *p, float *grad_offset,
                          double *col_acc, double *rbf_acc, float *work) {
    double mu[BLOCK], t[BLOCK], e[BLOCK], r[BLOCK], g_phi[BLOCK];
    const Py_ssize_t W = L->G + L->K, Wp = PAD(W);
    float *g_term = work, *lms = work + Wp;
    for (Py_ssize_t n = lo; n < hi; n++) {
        const float *go = grad_out + n * L->C;
        double total = 0.0; /* d loss / d term: W^T applied to the row of grad_out */
        for (Py_ssize_t c = 0; c < L->C; c++) total += go[c];
        for (Py_ssize_t g = 0; g < L->G; g++) g_term[g] = (float)total;
        for (Py_ssize_t k = 0; k < L->K; k++) {
            g_term[L->mg[k]] -= go[L->mt[k]];
            g_term[L->G + k] = go[L->mt[k]];
        }
        gather_row(offset + n * L->G, L, 1, lms);
        for (Py_ssize_t j = W; j < Wp; j++) lms[j] = 0.0f; /* padding, with g_phi = 0 */
        const float *dl = d_log_mu + n * W, *dp = d_phi + n * W;
        float *gof = grad_offset + n * L->G;
        for (Py_ssize_t s = 0; s < W; s += BLOCK) {
            int m = (int)(W - s < BLOCK ? W - s : BLOCK), mp = PAD(m);
#pragma omp simd
            for (int j = 0; j < m; j++) {
                double gt = (double)g_term[s + j];
                g_phi[j] = gt * (double)dp[s + j];
                g_term[s + j] = (float)(gt * (double)dl[s + j]); /* now d loss / d log_mu */
            }
            for (int j = m; j < mp; j++) g_phi[j] = 0.0;
            rbf_start(lms + s, mp, p, mu, t, e, r);
            rbf_reduce(mp, p, e, r, g_phi, rbf_acc);
        }
        for (Py_ssize_t j = 0; j < W; j++) col_acc[j] += g_term[j];
        for (Py_ssize_t g = 0; g < L->G; g++) gof[g] = g_term[g];
        for (Py_ssize_t k = 0; k < L->K; k++) gof[L->mg[k]] += g_term[L->G + k];
    }
}

/* ---- Python glue: addresses in, nothing out; the GIL is released while computing ---- */

static int read_rbf(PyObject *a_addr, int B, double v0, double h, double eps, Rbf *p, double *c) {
    p->a = (const double *)PyLong_AsVoidPtr(a_addr);
    if (PyErr_Occurred()) return -1;
    if (B < 1 || B > 256 || !(h > 0.0)) {
        PyErr_SetString(PyExc_ValueError, "RBF: need 1..256 centres and a positive spacing");
        return -1;
    }
    for (int i = 0; i < B; i++) c[i] = exp(-(i + 0.5));
    p->c = c;
    p->B = B;
    p->v0 = v0;
    p->inv_h = 1.0 / h;
    p->eps = eps;
    return 0;
}

static int read_layout(PyObject *mg, PyObject *mt, PyObject *col, Py_ssize_t G, Py_ssize_t K, Py_ssize_t C,
                       Layout *L) {
    L->G = G;
    L->K = K;
    L->C = C;
    L->mg = PyLong_AsVoidPtr(mg);
    L->mt = PyLong_AsVoidPtr(mt);
    L->col = PyLong_AsVoidPtr(col);
    if (PyErr_Occurred()) return -1;
    if (G < 1 || K < 0 || C < 1) {
        PyErr_SetString(PyExc_ValueError, "layout: need G >= 1, K >= 0, C >= 1");
        return -1;
    }
    return 0;
}

static PyObject *py_forward(PyObject *self, PyObject *args) {
    PyObject *x, *off, *col, *mg, *mt, *a, *out, *dlm, *dphi, *work, *dwork;
    Py_ssize_t lo, hi, G, K, C;
    int B, need_grad;
    double v0, h, eps;
    if (!PyArg_ParseTuple(args, "OOOnnnnnOOOidddOOOpOO", &x, &off, &col, &lo, &hi, &G, &K, &C, &mg, &mt, &a, &B, &v0,
                          &h, &eps, &out, &dlm, &dphi, &need_grad, &work, &dwork))
        return NULL;
    Rbf p;
    Layout L;
    double c[256];
    if (read_rbf(a, B, v0, h, eps, &p, c) < 0 || read_layout(mg, mt, col, G, K, C, &L) < 0) return NULL;
    const float *xp = PyLong_AsVoidPtr(x), *op = PyLong_AsVoidPtr(off);
    float *outp = PyLong_AsVoidPtr(out), *dlmp = PyLong_AsVoidPtr(dlm), *dphip = PyLong_AsVoidPtr(dphi),
          *wp = PyLong_AsVoidPtr(work);
    double *dwp = PyLong_AsVoidPtr(dwork);
    if (PyErr_Occurred()) return NULL;
    Py_BEGIN_ALLOW_THREADS
    forward_rows(xp, op, lo, hi, &L, &p, outp, dlmp, dphip, need_grad, wp, dwp);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_backward(PyObject *self, PyObject *args) {
    PyObject *go, *off, *col, *mg, *mt, *a, *dlm, *dphi, *gof, *col_acc, *rbf_acc, *work;
    Py_ssize_t lo, hi, G, K, C;
    int B;
    double v0, h, eps;
    if (!PyArg_ParseTuple(args, "OOOnnnnnOOOidddOOOOOO", &go, &off, &col, &lo, &hi, &G, &K, &C, &mg, &mt, &a, &B,
                          &v0, &h, &eps, &dlm, &dphi, &gof, &col_acc, &rbf_acc, &work))
        return NULL;
    Rbf p;
    Layout L;
    double c[256];
    if (read_rbf(a, B, v0, h, eps, &p, c) < 0 || read_layout(mg, mt, col, G, K, C, &L) < 0) return NULL;
    const float *gop = PyLong_AsVoidPtr(go), *op = PyLong_AsVoidPtr(off), *dlmp = PyLong_AsVoidPtr(dlm),
                *dphip = PyLong_AsVoidPtr(dphi);
    float *gofp = PyLong_AsVoidPtr(gof), *wp = PyLong_AsVoidPtr(work);
    double *cap = PyLong_AsVoidPtr(col_acc), *rap = PyLong_AsVoidPtr(rbf_acc);
    if (PyErr_Occurred()) return NULL;
    Py_BEGIN_ALLOW_THREADS
    backward_rows(gop, op, dlmp, dphip, lo, hi, &L, &p, gofp, cap, rap, wp);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"forward", py_forward, METH_VARARGS,
     "forward(x, offset, col, lo, hi, G, K, C, mg, mt, a, B, v0, h, eps, out, d_log_mu, d_phi, need_grad, work, "
     "dwork): rows [lo, hi) of the M x C log likelihood (addresses; with P = G + K rounded up to a multiple of "
     "8, work: 2 P float32, dwork: P + C float64)"},
    {"backward", py_backward, METH_VARARGS,
     "backward(grad_out, offset, col, lo, hi, G, K, C, mg, mt, a, B, v0, h, eps, d_log_mu, d_phi, grad_offset, "
     "col_acc, rbf_acc, work): rows [lo, hi) (addresses; col_acc, rbf_acc: float64 sums added to; work: 2 P "
     "float32, P = G + K rounded up to a multiple of 8)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_nbkernel",
                                    "Fused CellAssign log likelihood (C, SIMD); used through kernels.py", -1,
                                    methods};

PyMODINIT_FUNC PyInit__nbkernel(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "VEC", VEC) < 0) { /* the padding of the work rows */
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

#endif /* NBKERNEL_MATH_ONLY */
