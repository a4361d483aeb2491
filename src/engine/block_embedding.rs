//! Block embeddings of recruited semantic blocks (METHOD §1 and §7): `x⁰_i += B[k]` when token `t_i` is a
//! member of recruited block `k`. A block added with a zero row leaves the model's function unchanged
//! until training moves it, so a recruitment trial starts from the very model it is compared with.

use ndarray::{ArrayView2, ArrayViewMut2};

use super::Scalar;

/// Adds in place to `x [N, d]`: `table [K, d]`, `tokens [N]`, `block_of [V]` with `block_of[t] = k + 1`
/// when vocabulary id `t` belongs to recruited block `k`, 0 otherwise (ids past its end are general).
pub fn block_embedding_forward<F: Scalar>(
    mut x: ArrayViewMut2<F>,
    table: ArrayView2<F>,
    tokens: &[u32],
    block_of: &[u32],
) {
    for (&token, mut row) in tokens.iter().zip(x.rows_mut()) {
        if let Some(&k) = block_of.get(token as usize).filter(|&&k| k > 0) {
            row += &table.row(k as usize - 1);
        }
    }
}

/// `dx [N, d]`, `tokens [N]`, `block_of [V]`; accumulates `d_table [K, d]`,
/// `dB[k] += Σ_{i: t_i ∈ B_k} dx_i`. No input gradient: the forward adds to `x` in place, so `dx`
/// flows through unchanged.
pub fn block_embedding_backward<F: Scalar>(
    dx: ArrayView2<F>,
    tokens: &[u32],
    block_of: &[u32],
    mut d_table: ArrayViewMut2<F>,
) {
    for (&token, drow) in tokens.iter().zip(dx.rows()) {
        if let Some(&k) = block_of.get(token as usize).filter(|&&k| k > 0) {
            let mut d = d_table.row_mut(k as usize - 1);
            d += &drow;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::gradcheck::{assert_gradient, probe, random};
    use ndarray::{Array2, Ix2};

    #[test]
    fn block_embedding_gradient_matches_finite_differences() {
        let d = 4;
        // ids 1 and 4 in block 0, id 3 in block 1, the rest general; block 0 occurs three times
        let block_of = [0u32, 1, 0, 2, 1, 0];
        let tokens = [1u32, 0, 3, 4, 1, 5, 2, 3];
        let mut table = random(&[2, d], 1.0, 4).into_dimensionality::<Ix2>().unwrap();
        let base = random(&[tokens.len(), d], 1.0, 5).into_dimensionality::<Ix2>().unwrap();
        let upstream = probe(&[tokens.len(), d], 6).into_dimensionality::<Ix2>().unwrap();
        let mut d_table = Array2::zeros((2, d));
        block_embedding_backward(upstream.view(), &tokens, &block_of, d_table.view_mut());
        assert_gradient("block_emb", &mut table.view_mut().into_dyn(), &d_table.into_dyn(), |t| {
            let t = t.view().into_dimensionality::<Ix2>().unwrap();
            let mut x = base.clone();
            block_embedding_forward(x.view_mut(), t, &tokens, &block_of);
            (x * &upstream).sum()
        });
    }

    #[test]
    fn general_tokens_are_left_alone() {
        let table = Array2::from_elem((1, 3), 1.0f64);
        let mut x = Array2::<f64>::zeros((3, 3));
        block_embedding_forward(x.view_mut(), table.view(), &[0, 1, 7], &[0, 1]);
        assert_eq!(x.row(0).sum(), 0.0);
        assert_eq!(x.row(1).sum(), 3.0);
        // an id past the lookup's end (a vocabulary larger than the table knows) is general
        assert_eq!(x.row(2).sum(), 0.0);
    }
}
