//! The one scoring function: a model's code length on a token stream, under the conditions a caller
//! names — the model alone, or the rules at a dial value with their attention bias (METHOD §2) and
//! copy paths (METHOD §4). Training's evaluations, `ailla eval`, the dial metrics, recruitment's code
//! lengths and frozen trials, and the domain models all score through it, so that a number measured in
//! one place means what it means in every other.

use crate::engine::attention::{AttentionHook, NoHook};
use crate::engine::copy::CopyCaches;
use crate::engine::eval::{eval_batches, EvalBatch, EvalResult};
use crate::engine::loss::OutputLoss;
use crate::engine::model::ForwardCache;
use crate::engine::Model;

use super::copy_paths::batch_caches;
use super::hook::{DialSettings, LocalityHook};
use super::rules::RuleSet;
use super::schedule::per_layer;
use super::targets::BatchTargets;

/// The rules in force at one dial value.
#[derive(Clone, Debug)]
pub struct RulesAt<'a> {
    pub set: &'a RuleSet,
    /// The dial value; copy paths act at it (METHOD §4).
    pub lambda: f64,
    /// λ of every layer's attention bias: `lambda` itself, or the progressive schedule's (METHOD §5).
    pub layer_lambdas: Vec<f64>,
    pub dial: DialSettings,
    /// Keep per-row attention data for metrics and certificates; scoring alone does not need it.
    pub record: bool,
}

impl<'a> RulesAt<'a> {
    pub fn new(
        set: &'a RuleSet,
        lambda: f64,
        layers: usize,
        progressive_beta: Option<f64>,
        dial: DialSettings,
    ) -> Self {
        RulesAt { set, lambda, layer_lambdas: per_layer(lambda, layers, progressive_beta), dial, record: false }
    }

    pub fn recording(self) -> Self {
        RulesAt { record: true, ..self }
    }

    /// For a pass whose loss is not trained (evaluation, explanation, a recruitment check): ρ = 0
    /// changes no forward number, and spares each covered row the penalty's walk over its keys.
    pub fn without_penalty(self) -> Self {
        RulesAt { dial: DialSettings { penalty: 0.0, ..self.dial }, ..self }
    }

    /// Every layer's and head's target sets of one batch of `batch` sequences of `seq_len` tokens.
    pub fn targets(&self, model: &Model<f32>, inputs: &[u32], batch: usize, seq_len: usize) -> BatchTargets {
        BatchTargets::new(self.set, inputs, batch, seq_len, model.config.n_layers, model.config.n_heads)
    }

    /// The attention hook of a batch whose targets are `targets`.
    pub fn hook<'t>(&self, targets: &'t BatchTargets) -> LocalityHook<'t> {
        LocalityHook::new(targets, self.layer_lambdas.clone(), self.dial, self.record)
    }

    /// The copy caches of a batch, with the λ they act at; none when the model has no copy path.
    pub fn copy_caches(&self, model: &Model<f32>, inputs: &[u32], batch: usize, seq_len: usize) -> Option<CopyCaches> {
        batch_caches(self.set, &model.config.copy_paths, inputs, batch, seq_len)
    }
}

/// What a pass is scored under.
#[derive(Clone, Debug)]
pub enum Conditions<'a> {
    /// The model alone: no attention bias, no copy path — the distributed regime, λ = 0.
    Plain,
    Rules(RulesAt<'a>),
}

/// One scored batch, as a visitor of [`score`] sees it.
pub struct Scored<'s> {
    /// The batch's place in the pass, from 0.
    pub index: usize,
    pub batch: &'s EvalBatch,
    /// The forward pass, the visitor's to keep (a frozen trial keeps its hidden states).
    pub cache: ForwardCache<f32>,
    pub loss: OutputLoss<f32>,
    /// The hook the forward pass ran with; a backward pass must run with the same one.
    pub hook: &'s dyn AttentionHook<f32>,
    /// Under rules: the batch's target sets, its hook and its copy caches.
    pub rules: Option<(&'s BatchTargets, &'s LocalityHook<'s>, Option<&'s CopyCaches>)>,
}

/// Scores one batch under `conditions` and hands the result to `visit`. `with_grad` asks the output
/// loss for its gradients, for a visitor that runs the backward pass.
pub fn score_batch<R>(
    model: &Model<f32>,
    index: usize,
    batch: &EvalBatch,
    conditions: &Conditions,
    with_grad: bool,
    visit: impl FnOnce(Scored) -> R,
) -> R {
    let (inputs, windows, seq_len) = (&batch.inputs, batch.windows, batch.seq_len);
    match conditions {
        Conditions::Plain => {
            let cache = model.forward(inputs, windows, seq_len, &NoHook);
            let loss = model.output_loss(&cache, &batch.targets, with_grad, None);
            visit(Scored { index, batch, cache, loss, hook: &NoHook, rules: None })
        }
        Conditions::Rules(rules) => {
            let targets = rules.targets(model, inputs, windows, seq_len);
            let hook = rules.hook(&targets);
            let cache = model.forward(inputs, windows, seq_len, &hook);
            let copy = rules.copy_caches(model, inputs, windows, seq_len);
            let loss = model.output_loss(&cache, &batch.targets, with_grad, copy.as_ref().map(|c| (c, rules.lambda)));
            visit(Scored { index, batch, cache, loss, hook: &hook, rules: Some((&targets, &hook, copy.as_ref())) })
        }
    }
}

/// The forward pass of one batch under `rules` up to the final LayerNorm, and its copy caches: for a
/// caller that needs the hidden states and the output distribution, not the attention ([`score_batch`]
/// keeps every layer's activations for metrics and gradients). The cache holds no layers.
pub fn hidden_states(
    model: &Model<f32>,
    batch: &EvalBatch,
    rules: &RulesAt,
) -> (ForwardCache<f32>, Option<CopyCaches>) {
    let (inputs, windows, seq_len) = (&batch.inputs, batch.windows, batch.seq_len);
    let targets = rules.targets(model, inputs, windows, seq_len);
    let hook = rules.hook(&targets);
    // only `hidden` is read: the layers' activations are not kept
    let cache = model.forward_inference(inputs, windows, seq_len, &hook);
    let copy = rules.copy_caches(model, inputs, windows, seq_len);
    (cache, copy)
}

/// Scores every token of `ids` after the first, windowed by [`eval_batches`], `batch_size` windows
/// at a time; the first `gradient_batches` batches also carry the output loss's gradients. `visit`
/// sees every batch; the language-model figures of the whole pass are returned.
pub fn score(
    model: &Model<f32>,
    ids: &[u32],
    batch_size: usize,
    conditions: &Conditions,
    gradient_batches: usize,
    mut visit: impl FnMut(Scored),
) -> EvalResult {
    let (mut nll_sum, mut correct) = (0.0f64, 0usize);
    for (index, batch) in eval_batches(ids, model.config.ctx_len, batch_size).enumerate() {
        score_batch(model, index, &batch, conditions, index < gradient_batches, |scored| {
            nll_sum += scored.loss.nll.iter().map(|&v| f64::from(v)).sum::<f64>();
            correct += scored.loss.correct;
            visit(scored);
        });
    }
    EvalResult::from_sums(ids.len().saturating_sub(1), nll_sum, correct)
}

/// The language-model figures of `ids` under `conditions`.
pub fn evaluate(model: &Model<f32>, ids: &[u32], batch_size: usize, conditions: &Conditions) -> EvalResult {
    score(model, ids, batch_size, conditions, 0, |_| {})
}

/// The bits of every predicted token of `ids` (`ids[p + 1]` given `ids[..=p]` within its window), in
/// order: their sum is `L(ids | model)`.
pub fn code_lengths(model: &Model<f32>, ids: &[u32], batch_size: usize, conditions: &Conditions) -> Vec<f64> {
    let mut bits = Vec::with_capacity(ids.len().saturating_sub(1));
    score(model, ids, batch_size, conditions, 0, |scored| {
        bits.extend(scored.loss.nll.iter().map(|&v| f64::from(v) / std::f64::consts::LN_2));
    });
    bits
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::model::{Config, Gelu};

    fn tiny_model(ctx_len: usize, vocab_size: usize) -> Model<f32> {
        let config = Config {
            vocab_size,
            ctx_len,
            d_model: 8,
            n_heads: 2,
            n_layers: 1,
            d_ff: 8,
            ln_eps: 1e-5,
            tied: true,
            gelu: Gelu::Tanh,
            recruited_blocks: Vec::new(),
            copy_paths: Vec::new(),
        };
        Model::init(config, 1).expect("a valid configuration")
    }

    #[test]
    fn evaluation_scores_every_token_once_including_a_short_last_window() {
        let model = tiny_model(4, 5);
        let ids: Vec<u32> = (0..11).map(|i| i % 5).collect();
        let all = evaluate(&model, &ids, 2, &Conditions::Plain);
        assert_eq!(all.tokens, 10);
        // batch size does not change what is scored, only how it is grouped: a window's rows do not
        // depend on the other windows of its batch, and only BLAS's blocking of the larger product may
        // reorder sums, which moves f32 results by a few ulps
        let one_by_one = evaluate(&model, &ids, 1, &Conditions::Plain);
        assert!((all.mean_ce_nats - one_by_one.mean_ce_nats).abs() < 1e-6);
    }

    #[test]
    fn code_lengths_sum_to_the_scored_loss() {
        let model = tiny_model(8, 11);
        let ids: Vec<u32> = (0..37).map(|i| (i * 7 % 11) as u32).collect();
        let bits = code_lengths(&model, &ids, 3, &Conditions::Plain);
        let result = evaluate(&model, &ids, 3, &Conditions::Plain);
        assert_eq!(bits.len(), ids.len() - 1);
        let total: f64 = bits.iter().sum();
        // the same f32 terms summed in the same order in f64; only the division by ln 2 differs, so
        // the two agree to rounding of the f64 sums
        assert!((total - result.bits_per_token * result.tokens as f64).abs() <= 1e-9 * total.abs());
    }
}
