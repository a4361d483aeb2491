//! Token plus learned positional embedding: `x[b,t] = E[tokens[b,t]] + P[t]`.

use ndarray::{Array2, ArrayView2, ArrayViewMut2};

use super::Scalar;

/// `tok_emb [V, d]`, `pos_emb [ctx_len, d]` (rows `0..T` used), `tokens [N]` ids, batch-major, with
/// `seq_len = T`; returns `x [N, d]`.
pub fn embedding_forward<F: Scalar>(
    tok_emb: ArrayView2<F>,
    pos_emb: ArrayView2<F>,
    tokens: &[u32],
    seq_len: usize,
) -> Array2<F> {
    let d = tok_emb.ncols();
    let mut x = Array2::zeros((tokens.len(), d));
    for (n, (&token, mut row)) in tokens.iter().zip(x.rows_mut()).enumerate() {
        let t = n % seq_len;
        row.assign(&tok_emb.row(token as usize));
        row += &pos_emb.row(t);
    }
    x
}

/// `dx [N, d]`, `tokens [N]`, `seq_len = T`; accumulates `d_tok_emb [V, d]` (scatter-add by token id)
/// and `d_pos_emb [ctx_len, d]` (rows `0..T`), returns nothing. Runs sequentially: the scatter-add into
/// `E` would need atomics or per-thread copies of `[V, d]` to parallelise, and it costs `N·d` flops
/// against the `N·d·V` of the output layer.
pub fn embedding_backward<F: Scalar>(
    dx: ArrayView2<F>,
    tokens: &[u32],
    seq_len: usize,
    mut d_tok_emb: ArrayViewMut2<F>,
    mut d_pos_emb: ArrayViewMut2<F>,
) {
    for (n, (&token, drow)) in tokens.iter().zip(dx.rows()).enumerate() {
        // forward: x[n] = E[token] + P[t]
        let mut de = d_tok_emb.row_mut(token as usize);
        de += &drow;
        let mut dp = d_pos_emb.row_mut(n % seq_len);
        dp += &drow;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::gradcheck::{assert_gradient, probe, random};
    use ndarray::{Array2, Ix2};

    #[test]
    fn embedding_gradient_matches_finite_differences() {
        let (vocab, d, seq_len) = (7, 5, 4);
        // token 3 appears twice so the scatter-add must accumulate
        let tokens = [3u32, 1, 3, 6, 0, 2, 5, 3];
        let mut tok_emb = random(&[vocab, d], 1.0, 1).into_dimensionality::<Ix2>().unwrap();
        let mut pos_emb = random(&[seq_len, d], 1.0, 2).into_dimensionality::<Ix2>().unwrap();
        let upstream = probe(&[tokens.len(), d], 3).into_dimensionality::<Ix2>().unwrap();

        let mut d_tok = Array2::zeros((vocab, d));
        let mut d_pos = Array2::zeros((seq_len, d));
        embedding_backward(upstream.view(), &tokens, seq_len, d_tok.view_mut(), d_pos.view_mut());

        let pos_fixed = pos_emb.clone();
        assert_gradient("tok_emb", &mut tok_emb.view_mut().into_dyn(), &d_tok.into_dyn(), |e| {
            let e = e.view().into_dimensionality::<Ix2>().unwrap();
            (embedding_forward(e, pos_fixed.view(), &tokens, seq_len) * &upstream).sum()
        });
        let tok_fixed = tok_emb.clone();
        assert_gradient("pos_emb", &mut pos_emb.view_mut().into_dyn(), &d_pos.into_dyn(), |p| {
            let p = p.view().into_dimensionality::<Ix2>().unwrap();
            (embedding_forward(tok_fixed.view(), p, &tokens, seq_len) * &upstream).sum()
        });
    }
}
