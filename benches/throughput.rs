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
