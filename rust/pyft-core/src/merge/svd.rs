//! Truncated SVD of a low-rank product `B @ A` without forming it.
//!
//! `B [m, R]` and `A [R, n]` with `R ≪ m, n` (R = the summed ranks of the adapters). With thin QRs
//! `B = Q_b R_b` and `Aᵀ = Q_a R_a`, `B @ A = Q_b (R_b R_aᵀ) Q_aᵀ`; the SVD of the small `R × R` core
//! `R_b R_aᵀ = U Σ Vᵀ` gives the SVD of the product, `(Q_b U) Σ (Q_a V)ᵀ`, at `O((m + n) R²)` cost
//! instead of `O(m n min(m, n))`. The QR is Gram–Schmidt with one re-orthogonalisation pass
//! ("twice is enough"), the core SVD one-sided Jacobi; both in f64.

/// Thin QR of the columns `cols` (each of length `m`): returns `Q` (same layout, orthonormal
/// columns, or zero columns where a column depends on the previous ones) and `R` (`k × k`,
/// row-major, upper triangular), with `cols[j] = Σ_i Q[i] R[i, j]`.
fn qr(cols: &[Vec<f64>]) -> (Vec<Vec<f64>>, Vec<f64>) {
    let k = cols.len();
    let mut q: Vec<Vec<f64>> = Vec::with_capacity(k);
    let mut r = vec![0f64; k * k];
    for (j, col) in cols.iter().enumerate() {
        let mut v = col.clone();
        let norm0 = dot(&v, &v).sqrt();
        for _ in 0..2 {
            for (i, qi) in q.iter().enumerate() {
                let c = dot(qi, &v);
                r[i * k + j] += c;
                v.iter_mut().zip(qi).for_each(|(x, y)| *x -= c * y);
            }
        }
        let norm = dot(&v, &v).sqrt();
        if norm > 1e-13 * norm0 && norm > 0.0 {
            r[j * k + j] = norm;
            v.iter_mut().for_each(|x| *x /= norm);
        } else {
            v.iter_mut().for_each(|x| *x = 0.0);
        }
        q.push(v);
    }
    (q, r)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// SVD of a square `k × k` row-major matrix by one-sided Jacobi rotations: `(U, σ, V)` with `U`
/// and `V` row-major `k × k`, `M = U diag(σ) Vᵀ`, `σ` descending.
pub(crate) fn jacobi_svd(m: &[f64], k: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    // Work on columns: g[j] is column j of M, v[j] column j of V.
    let mut g: Vec<Vec<f64>> = (0..k).map(|j| (0..k).map(|i| m[i * k + j]).collect()).collect();
    let mut v: Vec<Vec<f64>> = (0..k).map(|j| (0..k).map(|i| f64::from(u8::from(i == j))).collect()).collect();
    for _sweep in 0..80 {
        let mut rotated = false;
        for p in 0..k {
            for q in p + 1..k {
                let (alpha, beta, gamma) = (dot(&g[p], &g[p]), dot(&g[q], &g[q]), dot(&g[p], &g[q]));
                if gamma == 0.0 || gamma.abs() <= 1e-15 * (alpha * beta).sqrt() {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                for cols in [&mut g, &mut v] {
                    let (lo, hi) = cols.split_at_mut(q);
                    for (x, y) in lo[p].iter_mut().zip(hi[0].iter_mut()) {
                        let (a, b) = (*x, *y);
                        *x = c * a - s * b;
                        *y = s * a + c * b;
                    }
                }
            }
        }
        if !rotated {
            break;
        }
    }
    let sigma: Vec<f64> = g.iter().map(|c| dot(c, c).sqrt()).collect();
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| sigma[b].total_cmp(&sigma[a]));
    let (mut u_out, mut v_out, mut s_out) = (vec![0f64; k * k], vec![0f64; k * k], vec![0f64; k]);
    for (dst, &j) in order.iter().enumerate() {
        s_out[dst] = sigma[j];
        for i in 0..k {
            u_out[i * k + dst] = if sigma[j] > 0.0 { g[j][i] / sigma[j] } else { 0.0 };
            v_out[i * k + dst] = v[j][i];
        }
    }
    (u_out, s_out, v_out)
}

/// The rank-`rank` truncation of `B @ A` (`b` row-major `[m, k]`, `a` row-major `[k, n]`) as factors
/// `(B' [m, rank'], A' [rank', n])` with `rank' = min(rank, k)`: `B' = Q_b U_r Σ_r`, `A' = (Q_a V_r)ᵀ`.
pub fn truncate_product(b: &[f64], a: &[f64], m: usize, k: usize, n: usize, rank: usize) -> (Vec<f32>, Vec<f32>, usize) {
    let b_cols: Vec<Vec<f64>> = (0..k).map(|j| (0..m).map(|i| b[i * k + j]).collect()).collect();
    let a_cols: Vec<Vec<f64>> = (0..k).map(|j| a[j * n..(j + 1) * n].to_vec()).collect(); // columns of Aᵀ
    let (qb, rb) = qr(&b_cols);
    let (qa, ra) = qr(&a_cols);
    // core = R_b · R_aᵀ
    let mut core = vec![0f64; k * k];
    for i in 0..k {
        for j in 0..k {
            core[i * k + j] = (0..k).map(|l| rb[i * k + l] * ra[j * k + l]).sum();
        }
    }
    let (u, s, v) = jacobi_svd(&core, k);
    let r = rank.min(k);
    let mut b_out = vec![0f32; m * r];
    let mut a_out = vec![0f32; r * n];
    for c in 0..r {
        // Column c of Q_b U, times σ_c; row c of (Q_a V)ᵀ.
        let mut col = vec![0f64; m];
        let mut row = vec![0f64; n];
        for l in 0..k {
            let (ul, vl) = (u[l * k + c], v[l * k + c]);
            col.iter_mut().zip(&qb[l]).for_each(|(x, y)| *x += ul * y);
            row.iter_mut().zip(&qa[l]).for_each(|(x, y)| *x += vl * y);
        }
        for i in 0..m {
            b_out[i * r + c] = (col[i] * s[c]) as f32;
        }
        for (dst, x) in a_out[c * n..(c + 1) * n].iter_mut().zip(&row) {
            *dst = *x as f32;
        }
    }
    (b_out, a_out, r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 11) as f64 / (1u64 << 53) as f64) - 0.5
    }

    fn product(b: &[f64], a: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for l in 0..k {
                for j in 0..n {
                    out[i * n + j] += b[i * k + l] * a[l * n + j];
                }
            }
        }
        out
    }

    #[test]
    fn full_rank_truncation_reconstructs_and_lower_rank_is_optimal() {
        let (m, k, n) = (13, 5, 9);
        let mut seed = 7;
        let mut b: Vec<f64> = (0..m * k).map(|_| lcg(&mut seed)).collect();
        let a: Vec<f64> = (0..k * n).map(|_| lcg(&mut seed)).collect();
        // Make column 4 of B a copy of column 0: rank 4, and Gram–Schmidt meets a dependent column.
        for i in 0..m {
            b[i * k + 4] = b[i * k];
        }
        let full = product(&b, &a, m, k, n);
        let (b2, a2, r) = truncate_product(&b, &a, m, k, n, 99);
        assert_eq!(r, k);
        let back = product(&b2.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(),
                           &a2.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(), m, r, n);
        let scale = full.iter().fold(0f64, |s, x| s.max(x.abs()));
        assert!(full.iter().zip(&back).all(|(x, y)| (x - y).abs() <= 1e-6 * scale));
        // Rank 4 is exact too (the matrix has rank 4).
        let (b4, a4, _) = truncate_product(&b, &a, m, k, n, 4);
        let back4 = product(&b4.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(),
                            &a4.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(), m, 4, n);
        assert!(full.iter().zip(&back4).all(|(x, y)| (x - y).abs() <= 1e-6 * scale));
    }

    #[test]
    fn jacobi_singular_values() {
        // diag(3, -1, 2) rotated: singular values 3, 2, 1.
        let m = [0.0, 3.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 2.0];
        let (u, s, v) = jacobi_svd(&m, 3);
        assert!((s[0] - 3.0).abs() < 1e-12 && (s[1] - 2.0).abs() < 1e-12 && (s[2] - 1.0).abs() < 1e-12);
        for i in 0..3 {
            for j in 0..3 {
                let x: f64 = (0..3).map(|l| u[i * 3 + l] * s[l] * v[j * 3 + l]).sum();
                assert!((x - m[i * 3 + j]).abs() < 1e-12);
            }
        }
    }
}
