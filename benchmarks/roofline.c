/* The roofline of the CPU likelihood (benchmarks/roofline.py compiles this file at run time):
 * the least arithmetic one negative binomial term and its gradient need in a training step, with
 * the fused kernel's own primitives (vexp, log_split / log_finish, stirling, psi, rbf_start,
 * rbf_phi, rbf_reduce, log2_recip, included from src/cellassign_nf/_nbkernel.c; five logs share one
 * division in log5 below) and nothing else: no gather of the inputs, no sum by type, no W^T, no
 * Python. Zero counts and non-zero counts come
 * in separate arrays, so each term does exactly the work its count needs, in full SIMD blocks.
 *
 * Per term, forward: mu = exp(log_mu), the RBF (two more exps and B centres), then
 *   x = 0: term = phi log phi - phi log(phi + mu): two logs, one division;
 *   x > 0: the lgamma and digamma differences (rising products of 6 factors, Stirling, psi):
 *          five logs sharing one division, one more division;
 * backward: the RBF again (three exps, B centres) to reduce sum grad * d term/d phi * e[i].
 */
#define NBKERNEL_MATH_ONLY
#include "_nbkernel.c"

/* five logs for the price of one division: each 1 / (2 + f_i) from 1 / prod_i (2 + f_i), the
 * d_i lying in [1.7, 2.5] (no overflow); written out in scalars so that the loop stays SIMD */
INLINE void log5(double x0, double x1, double x2, double x3, double x4, double *l0, double *l1, double *l2,
                 double *l3, double *l4) {
    double e0, e1, e2, e3, e4, f0, f1, f2, f3, f4;
    log_split(x0, &e0, &f0);
    log_split(x1, &e1, &f1);
    log_split(x2, &e2, &f2);
    log_split(x3, &e3, &f3);
    log_split(x4, &e4, &f4);
    double d0 = 2.0 + f0, d1 = 2.0 + f1, d2 = 2.0 + f2, d3 = 2.0 + f3, d4 = 2.0 + f4;
    double p01 = d0 * d1, p012 = p01 * d2, p0123 = p012 * d3;
    double r = 1.0 / (p0123 * d4); /* 1 / (d0 ... d4) */
    *l4 = log_finish(e4, f4, r * p0123);
    r *= d4; /* 1 / (d0 ... d3) */
    *l3 = log_finish(e3, f3, r * p012);
    r *= d3;
    *l2 = log_finish(e2, f2, r * p01);
    r *= d2;
    *l1 = log_finish(e1, f1, r * d0);
    *l0 = log_finish(e0, f0, r * d1);
}

/* x = 0: term, d term/d phi and d term/d log_mu; one division gives 1/(phi + mu) and both logs */
static inline void roof_zero(int n, const double *mu, const double *phi, const double *dphi, double *terms,
                             float *d_log_mu, float *d_phi) {
#pragma omp simd
    for (int j = 0; j < n; j++) {
        double ph = phi[j], m = mu[j], pm = ph + m, log_phi, log_pm, inv_pm;
        log2_recip(ph, pm, pm, &log_phi, &log_pm, &inv_pm);
        double ratio = ph * inv_pm, dt_dphi = log_phi + 1.0 - log_pm - ratio;
        terms[j] = ph * (log_phi - log_pm);
        d_phi[j] = (float)dt_dphi;
        d_log_mu[j] = (float)(m * (dt_dphi * dphi[j] - ratio));
    }
}

/* x > 0: the full term with the shifted Stirling series, as few divisions and logs as it needs */
static inline void roof_full(const float *x, const float *log_mu, int n, const double *mu, const double *phi,
                             const double *dphi, double *terms, float *d_log_mu, float *d_phi) {
#pragma omp simd
    for (int j = 0; j < n; j++) {
        double xj = (double)x[j], ph = phi[j], m = mu[j], z1 = xj + ph, p1, dp1, p2, dp2;
        rising(z1, &p1, &dp1);
        rising(ph, &p2, &dp2);
        double w1 = z1 + SHIFT, w2 = ph + SHIFT, pm = ph + m, ww = w1 * w2, pp = p1 * p2;
        double inv = 1.0 / (ww * pm * pp);
        double inv_ww = inv * pm * pp, inv_pm = inv * ww * pp, inv_pp = inv * ww * pm;
        double iw1 = inv_ww * w2, iw2 = inv_ww * w1, lw1, lw2, log_ratio, log_phi, log_pm;
        log5(w1, w2, p1 * p1 * inv_pp, ph, pm, &lw1, &lw2, &log_ratio, &log_phi, &log_pm);
        terms[j] = stirling(w1, lw1, iw1) - stirling(w2, lw2, iw2) - log_ratio + ph * log_phi +
                   xj * (double)log_mu[j] - (ph + xj) * log_pm;
        double ratio = (ph + xj) * inv_pm;
        double dt_dphi = psi(lw1, iw1) - psi(lw2, iw2) - (dp1 * p2 - dp2 * p1) * inv_pp + log_phi + 1.0 - log_pm - ratio;
        d_phi[j] = (float)dt_dphi;
        d_log_mu[j] = (float)(xj + m * (dt_dphi * dphi[j] - ratio));
    }
}

/* forward and backward of n terms, all with x = 0 (zero != 0) or all with x > 0; grad is
 * d loss / d term; acc[B] gets sum grad d term/d phi e[i]. Returns the sum of the terms. */
double roof_run(const float *x, const float *log_mu, const float *grad, long n, int zero, const double *a, int B,
                double v0, double h, double eps, float *d_log_mu, float *d_phi, double *acc) {
    double c[256], mu[BLOCK], t[BLOCK], e[BLOCK], r[BLOCK], phi[BLOCK], dphi[BLOCK], terms[BLOCK], g_phi[BLOCK];
    for (int i = 0; i < B; i++) c[i] = exp(-(i + 0.5));
    Rbf p = {a, c, B, v0, 1.0 / h, eps};
    double total = 0.0;
    for (long s = 0; s < n; s += BLOCK) {
        int m = (int)(n - s < BLOCK ? n - s : BLOCK);
        rbf_start(log_mu + s, m, &p, mu, t, e, r);
        rbf_phi(m, &p, t, e, r, phi, dphi);
        if (zero)
            roof_zero(m, mu, phi, dphi, terms, d_log_mu + s, d_phi + s);
        else
            roof_full(x + s, log_mu + s, m, mu, phi, dphi, terms, d_log_mu + s, d_phi + s);
#pragma omp simd reduction(+ : total)
        for (int j = 0; j < m; j++) {
            total += terms[j];
            g_phi[j] = (double)grad[s + j] * (double)d_phi[s + j];
        }
        rbf_start(log_mu + s, m, &p, mu, t, e, r);
        rbf_reduce(m, &p, e, r, g_phi, acc);
    }
    return total;
}
