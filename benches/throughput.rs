//! `cargo bench`: the training and evaluation steps that `ailla bench` measures, under divan's
//! statistics. `ailla bench --compare-torch` puts the same figures beside PyTorch's.

use ailla::bench::{standard_configs, BenchConfig};
use ailla::engine::attention::NoHook;
use ailla::engine::optim::{AdamW, OptimConfig};
use ailla::engine::Model;
use ailla::rng::Rng;

fn main() {
    // SAFETY: the first statement of main, before divan starts any thread or product.
    unsafe { ailla::engine::environment::select_blas_kernel() };
    divan::main();
}

fn config(name: &str) -> BenchConfig {
    standard_configs().into_iter().find(|c| c.name == name).expect("a standard configuration")
}

fn batch(config: &BenchConfig) -> (Vec<u32>, Vec<u32>) {
    let mut rng = Rng::new(7);
    let n = config.batch_size * config.ctx_len;
    let draw = |rng: &mut Rng| (0..n).map(|_| rng.below(config.vocab_size) as u32).collect::<Vec<_>>();
    (draw(&mut rng), draw(&mut rng))
}

#[divan::bench(args = ["char-small", "word-wt2"], sample_count = 10)]
fn train_step(bencher: divan::Bencher, name: &str) {
    let config = config(name);
    let mut model = Model::<f32>::init(config.model_config(), 1).expect("a valid configuration");
    let mut optimizer = AdamW::new(&model.params);
    let optim = OptimConfig::default();
    let (tokens, targets) = batch(&config);
    bencher.counter(divan::counter::ItemsCount::new(tokens.len())).bench_local(|| {
        let (_, _, grads) = model.loss_and_grads(&tokens, &targets, config.batch_size, config.ctx_len, &NoHook, None);
        optimizer.update(&mut model.params, &grads, &optim, 1e-4);
    });
}

#[divan::bench(args = ["char-small", "word-wt2"], sample_count = 10)]
fn eval_step(bencher: divan::Bencher, name: &str) {
    let config = config(name);
    let model = Model::<f32>::init(config.model_config(), 1).expect("a valid configuration");
    let (tokens, targets) = batch(&config);
    bencher.counter(divan::counter::ItemsCount::new(tokens.len())).bench_local(|| {
        let cache = model.forward(&tokens, config.batch_size, config.ctx_len, &NoHook);
        divan::black_box(model.output_loss(&cache, &targets, false, None).mean_nll)
    });
}

/// The four weight gradients of a char-small block (`xᵀ·∂y` over a batch of 2048 rows), split into
/// blocks of the output or into chunks of the batch (`linalg::product` picks the second where its
/// products pack their operands, as OpenBLAS does; run with `AILLA_SIMD=avx2` to see an AVX2 CPU's).
#[divan::bench(args = ["blocks", "inner chunks"], sample_count = 30)]
fn weight_gradients(bencher: divan::Bencher, split: &str) {
    use ailla::engine::linalg::{product_by_blocks, product_by_inner_chunks};
    let config = config("char-small");
    let (d, ff, n) = (config.d_model, config.d_ff, config.batch_size * config.ctx_len);
    let mut rng = Rng::new(11);
    let mut matrix =
        |rows: usize, cols: usize| ndarray::Array2::from_shape_fn((rows, cols), |_| rng.next_f64() as f32 - 0.5);
    // (input, output gradient, weight gradient) of W₂, W₁, W_O and W_QKV
    let mut products: Vec<_> = [(ff, d), (d, ff), (d, d), (d, 3 * d)]
        .into_iter()
        .map(|(rows, cols)| (matrix(n, rows), matrix(n, cols), ndarray::Array2::<f32>::zeros((rows, cols))))
        .collect();
    let by_chunks = split == "inner chunks";
    bencher.bench_local(|| {
        for (x, dy, dw) in products.iter_mut() {
            if by_chunks {
                product_by_inner_chunks(x.t(), dy.view(), true, dw.view_mut());
            } else {
                product_by_blocks(x.t(), dy.view(), true, dw.view_mut());
            }
        }
    });
}
