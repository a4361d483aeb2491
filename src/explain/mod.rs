//! `ailla explain`: one prediction of a checkpoint taken apart, in the terms of METHOD §4–§6.
//!
//! The prediction at position `N` is the distribution `p_N` over the token at `N + 1` given the tokens
//! before it in the evaluation's window (the window [`crate::engine::eval::eval_batches`] scores `N` in),
//! so that what is explained is exactly what `ailla eval` scores. Everything comes from one pass of the
//! scoring function ([`crate::locality::score::score_batch`]) with the hook recording: the attention
//! weights of every layer and head, the rules' target sets, the copy caches, and the recorded `δ_i` of
//! the certificates ([`crate::locality::bounds::RowObservation`]). Nothing here computes a forward
//! operation of its own; the softmax over the vocabulary of the one explained row is formed in `f64`
//! from the engine's hidden state and output weight, because the fused loss never forms it whole.

pub mod render;

use ndarray::s;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::data::tokenizer::{EOS, UNK};
use crate::data::{TokenizerKind, Vocabulary};
use crate::engine::copy::{gate_forward, mixture_forward};
use crate::engine::eval::EvalBatch;
use crate::engine::linalg::matmul;
use crate::engine::Model;
use crate::locality::bounds::RowObservation;
use crate::locality::rules::{RuleKind, RuleSpec};
use crate::locality::score::{score_batch, Conditions, RulesAt, Scored};
use crate::locality::{DialSettings, RuleSet};
use crate::{Error, Result};

/// Most probable tokens listed.
pub const TOP_PREDICTIONS: usize = 10;
/// Positions listed per attention row, by weight.
pub const TOP_ATTENDED: usize = 5;
/// Unknown pieces of a text listed by name (all are counted).
pub const LISTED_UNKNOWN: usize = 20;
/// Tokens of context shown before and after a position.
const CONTEXT_BEFORE: usize = 4;
const CONTEXT_AFTER: usize = 2;
/// Tokens of the text shown before the predicted token.
const READ_BEFORE: usize = 12;

/// A text as the model reads it, with what the vocabulary did not know.
#[derive(Clone, Debug, PartialEq)]
pub struct Tokenized {
    pub ids: Vec<u32>,
    /// Pieces of the text that became `<unk>`, with their token positions.
    pub unknown: Vec<UnknownPiece>,
}

impl Tokenized {
    pub fn new(vocabulary: &Vocabulary, text: &str) -> Self {
        let mut unknown = Vec::new();
        let ids = vocabulary.encode_noting_unknown(text, |position, piece| {
            unknown.push(UnknownPiece { position, text: piece.to_string() })
        });
        Tokenized { ids, unknown }
    }
}

/// A checkpoint made ready to explain: its stored rules with any injected ones, compiled, and its
/// model with a shut copy path (METHOD §7's `b₀`) for every injected copy rule, as `ailla eval --rules`
/// does.
pub struct Prepared {
    pub model: Model<f32>,
    pub rules: RuleSet,
    /// The rules as compiled specs, whose statements the explanation quotes.
    pub spec: RuleSpec,
    pub dial: DialSettings,
    pub progressive_beta: Option<f64>,
    /// The compiler's warnings about the rules against this vocabulary.
    pub warnings: Vec<String>,
}

impl Prepared {
    /// `extra`: rules injected at inference, added to the checkpoint's own. A checkpoint without rules
    /// and without `extra` is explained with none (every row uncovered, no copy path acting).
    pub fn new(checkpoint: &Checkpoint, extra: Option<&RuleSpec>) -> Result<Self> {
        let empty = RuleSpec { blocks: Vec::new(), rules: Vec::new(), own_block_default: true };
        let spec = match (&checkpoint.locality, extra) {
            (Some(stored), Some(extra)) => stored.rules.with(extra),
            (Some(stored), None) => stored.rules.clone(),
            (None, Some(extra)) => extra.clone(),
            (None, None) => empty,
        };
        let (rules, warnings) = RuleSet::compile(&spec, &checkpoint.vocabulary)?;
        let mut model = checkpoint.model.clone();
        for name in crate::locality::copy_paths::missing_paths(&rules, &model.config.copy_paths) {
            model.add_copy_path(&name)?;
        }
        let stored = checkpoint.locality.as_ref();
        Ok(Prepared {
            model,
            rules,
            spec,
            dial: stored.map_or_else(DialSettings::default, |s| s.dial),
            progressive_beta: stored.and_then(|s| s.progressive_beta),
            warnings: warnings.into_iter().map(|w| w.0).collect(),
        })
    }

    /// The rule named `name` as a `.rules` statement; a default own-block rule (METHOD §3: block tokens
    /// no rule covers attend to their own block), which has no statement of its own, is written as the
    /// rule it stands for.
    pub fn rule_text(&self, name: &str) -> Option<String> {
        if let Some(entry) = self.spec.rules.iter().find(|r| r.name == name) {
            return Some(crate::dsl::format::rule_spec(entry));
        }
        let rule = self.rules.rules.iter().chain(&self.rules.copy_rules).find(|r| r.name == name)?;
        match rule.kind {
            RuleKind::OwnBlock { block } => {
                // block numbers count from 1: block 0 is the general block
                let block = &self.rules.blocks.get(block.checked_sub(1)?)?.name;
                Some(format!("{block} attend to own block"))
            }
            _ => None,
        }
    }
}

/// What to explain.
#[derive(Clone, Copy, Debug)]
pub struct Request {
    /// `N`: the prediction of the token at `N + 1` from the tokens up to `N`, 0-based.
    pub position: usize,
    pub lambda: f64,
    /// The certificates' `ε` (fidelity target `1 − ε`).
    pub epsilon: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnknownPiece {
    /// Token position in the text.
    pub position: usize,
    /// The piece as written.
    pub text: String,
}

/// `ailla explain --json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Explanation {
    pub checkpoint: String,
    /// `char` or `word`.
    pub tokenizer: String,
    /// Tokens in the text.
    pub text_tokens: usize,
    /// `N`: the position whose next token (`N + 1`) is predicted, 0-based.
    pub position: usize,
    /// First position of the window the prediction reads (the evaluation's window holding `N`).
    pub window_start: usize,
    /// The dial value λ of the copy paths, and `layer_lambdas` that of each layer's attention bias.
    pub lambda: f64,
    pub layer_lambdas: Vec<f64>,
    pub epsilon: f64,
    /// How many pieces of the text are not in the vocabulary and were read as `<unk>`.
    pub unknown_count: usize,
    /// The first of them (at most 20).
    pub unknown: Vec<UnknownPiece>,
    /// The text read just before the prediction, up to position `N`.
    pub context: String,
    /// The token that follows in the text and what the model gave it.
    pub actual: Actual,
    /// The most probable tokens under the full mixture `p_N`, most probable first.
    pub top: Vec<Candidate>,
    /// `Σ_v p_N(v)` over the whole vocabulary: 1 up to rounding.
    pub probability_sum: f64,
    pub vocabulary_size: usize,
    /// Every layer and head, in order.
    pub attention: Vec<HeadRow>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Candidate {
    pub id: u32,
    pub token: String,
    pub probability: f64,
}

/// The actual next token `y` and the exact decomposition `p(y) = w₀ q(y) + Σ_c w_c κ_c(y)`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Actual {
    pub id: u32,
    pub token: String,
    /// `p_N(y)`.
    pub probability: f64,
    /// `−log₂ p_N(y)`: what the evaluation counts for this token.
    pub bits: f64,
    /// 1 for the most probable token.
    pub rank: usize,
    pub network: NetworkShare,
    /// One per copy path of the model, in its order.
    pub copy_paths: Vec<CopyShare>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkShare {
    /// `w₀`, the network's weight in the mixture (1 where no copy path acts).
    pub weight: f64,
    /// `q(y)`, the network's softmax alone.
    pub softmax_probability: f64,
    /// `w₀·q(y)`.
    pub share: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CopyShare {
    /// The copy path, named after its copy rule.
    pub name: String,
    /// The rule's statement; null when the rule is not in this rule set.
    pub rule: Option<String>,
    /// Whether the rule has targets at `N` (its cache is not empty).
    pub applies: bool,
    /// `w_c`, the path's weight in the mixture (0 at λ = 0 or where it does not apply).
    pub weight: f64,
    /// `κ_c(y)`, the share of the path's targets holding `y`.
    pub cache_probability: f64,
    /// `w_c·κ_c(y)`.
    pub share: f64,
    /// The positions the path copied `y` from.
    pub sources: Vec<Source>,
    /// The cache's most frequent tokens, `κ_c` as `probability` (at most 5).
    pub cache: Vec<Candidate>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub position: usize,
    pub token: String,
    /// A few tokens around it, the position's own in brackets.
    pub context: String,
}

/// One attention row: layer `layer`, head `head`, query `N`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeadRow {
    pub layer: usize,
    pub head: usize,
    /// λ of this layer's attention bias.
    pub lambda: f64,
    /// `−Σ_j α_j log₂ α_j`.
    pub entropy_bits: f64,
    /// The positions with the most weight, heaviest first (at most 5).
    pub attended: Vec<Attended>,
    /// The rules that cover the row; null when none does.
    pub coverage: Option<Coverage>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Attended {
    pub position: usize,
    pub token: String,
    pub weight: f64,
}

/// A covered row (METHOD §3, §6): its target set `T_N` (the union of the covering rules' targets at
/// this head), its fidelity and its certificate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Coverage {
    pub rules: Vec<CoveringRule>,
    /// `T_N`, ascending.
    pub targets: Vec<Attended>,
    /// `s_r`, the strength the bias uses.
    pub strength: f64,
    /// `F = Σ_{j∈T} α_j`, the attention mass on the targets.
    pub fidelity: f64,
    /// `λ*(ε) = (δ + ln((1−ε)/ε))/(μ s_r)`: from this λ on, `F ≥ 1 − ε`. Null when every visible
    /// position is a target (any λ will do) or the margin is 0 (none will).
    pub lambda_star: Option<f64>,
    /// `F ≥ 1 − ε` at this λ.
    pub certified: bool,
    /// Every exact relation and bound of METHOD §6 holds on this row (false would be a bug).
    pub bounds_hold: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CoveringRule {
    pub name: String,
    /// The rule's statement in the `.rules` language.
    pub text: Option<String>,
    /// Whether its targets are part of `T_N`: false when a covering rule of higher priority wins.
    pub in_force: bool,
    /// The rule's own targets at `N`.
    pub targets: Vec<usize>,
    /// The attention mass on them.
    pub fidelity: f64,
}

/// The vocabulary's spelling of a token.
pub fn token_text(vocabulary: &Vocabulary, id: u32) -> String {
    vocabulary.tokens.get(id as usize).cloned().unwrap_or_else(|| UNK.to_string())
}

/// Tokens `from..to` of `ids` as readable text, position `mark` (if inside) in brackets. Line ends are
/// `⏎`, so a context is one line.
fn read_span(vocabulary: &Vocabulary, ids: &[u32], from: usize, to: usize, mark: Option<usize>) -> String {
    let pieces: Vec<String> = (from..to.min(ids.len()))
        .map(|j| {
            let token = token_text(vocabulary, ids[j]);
            let token = if token == EOS || token == "\n" { "⏎".to_string() } else { token };
            if mark == Some(j) {
                format!("[{token}]")
            } else {
                token
            }
        })
        .collect();
    let joined = match vocabulary.kind {
        TokenizerKind::Word => pieces.join(" "),
        TokenizerKind::Char => pieces.concat(),
    };
    if from > 0 {
        format!("… {joined}")
    } else {
        joined
    }
}

fn around(vocabulary: &Vocabulary, ids: &[u32], j: usize) -> String {
    read_span(vocabulary, ids, j.saturating_sub(CONTEXT_BEFORE), j + CONTEXT_AFTER + 1, Some(j))
}

/// Explains the prediction `request.position` of `text` under `prepared`, labelled `checkpoint`.
pub fn explain(
    prepared: &Prepared,
    vocabulary: &Vocabulary,
    text: &Tokenized,
    request: Request,
    checkpoint: &str,
) -> Result<Explanation> {
    let ids = &text.ids;
    let Request { position, lambda, epsilon } = request;
    if !(0.0..=1.0).contains(&lambda) {
        return Err(Error::invalid("--lambda", format!("λ = {lambda} is outside [0, 1]")));
    }
    if !(epsilon > 0.0 && epsilon < 1.0) {
        return Err(Error::invalid("--epsilon", "must lie strictly between 0 and 1"));
    }
    if ids.len() < 2 {
        return Err(Error::invalid("--text", format!("is {} token(s) long; a prediction needs two", ids.len())));
    }
    if position + 1 >= ids.len() {
        return Err(Error::invalid(
            "--at",
            format!(
                "position {position} has no next token: the text is {} tokens long (positions 0 to {}), so \
                 --at must be at most {}",
                ids.len(),
                ids.len() - 1,
                ids.len() - 2
            ),
        ));
    }
    let model = &prepared.model;
    let config = &model.config;
    // the evaluation's window: consecutive windows of ctx_len inputs, the last one shorter
    let start = position / config.ctx_len * config.ctx_len;
    let seq_len = config.ctx_len.min(ids.len() - 1 - start);
    let batch = EvalBatch {
        inputs: ids[start..start + seq_len].to_vec(),
        targets: ids[start + 1..start + seq_len + 1].to_vec(),
        windows: 1,
        seq_len,
    };
    // the penalty is not part of the prediction (as in evaluation)
    let rules = RulesAt::new(&prepared.rules, lambda, config.n_layers, prepared.progressive_beta, prepared.dial)
        .without_penalty()
        .recording();
    let layer_lambdas = rules.layer_lambdas.clone();
    let conditions = Conditions::Rules(rules);
    let row = position - start;
    let (actual, top, probability_sum, attention) = score_batch(model, 0, &batch, &conditions, false, |scored| {
        let (actual, top, sum) = predict(prepared, vocabulary, &scored, row, start, ids, lambda);
        let attention = attention_rows(prepared, vocabulary, &scored, row, start, ids, epsilon);
        (actual, top, sum, attention)
    });
    Ok(Explanation {
        checkpoint: checkpoint.to_string(),
        tokenizer: vocabulary.kind.name().to_string(),
        text_tokens: ids.len(),
        position,
        window_start: start,
        lambda,
        layer_lambdas,
        epsilon,
        unknown_count: text.unknown.len(),
        unknown: text.unknown.iter().take(LISTED_UNKNOWN).cloned().collect(),
        context: read_span(vocabulary, ids, position.saturating_sub(READ_BEFORE - 1).max(start), position + 1, None),
        actual,
        top,
        probability_sum,
        vocabulary_size: config.vocab_size,
        attention,
    })
}

/// The full mixture `p` at `row` and the decomposition of `p(y)`.
fn predict(
    prepared: &Prepared,
    vocabulary: &Vocabulary,
    scored: &Scored,
    row: usize,
    start: usize,
    ids: &[u32],
    lambda: f64,
) -> (Actual, Vec<Candidate>, f64) {
    let model = &prepared.model;
    let hidden = &scored.cache.hidden;
    // q = softmax(h_N · U), in f64 from the engine's f32 logits                   [V]
    let logits = matmul(hidden.slice(s![row..row + 1, ..]), model.output_weight());
    let logits: Vec<f64> = logits.iter().map(|&v| f64::from(v)).collect();
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let partition: f64 = logits.iter().map(|&z| (z - max).exp()).sum();
    let q: Vec<f64> = logits.iter().map(|&z| (z - max).exp() / partition).collect();
    let y = scored.batch.targets[row];
    let paths = &model.config.copy_paths;
    let caches = scored.rules.and_then(|(_, _, caches)| caches);
    // w₀ and w_c as the loss computes them: the engine's gate and mixture on the window's rows
    let (mut w0, mut weights) = (1.0, vec![0.0; paths.len()]);
    if let (Some(caches), true) = (caches, lambda > 0.0) {
        let log_q: Vec<f64> = match scored.loss.copy.as_ref() {
            Some(copy) => copy.softmax_nll.iter().map(|&v| -f64::from(v)).collect(),
            None => scored.loss.nll.iter().map(|&v| -f64::from(v)).collect(),
        };
        let gate =
            gate_forward(hidden.view(), model.params.copy_gate_weight.view(), model.params.copy_gate_bias.view())
                .mapv(f64::from);
        let mix = mixture_forward(&log_q, gate.view(), caches, &scored.batch.targets, lambda);
        w0 = mix.log_w0[row].exp();
        for (c, weight) in weights.iter_mut().enumerate() {
            *weight = mix.log_weights[[row, c]].exp();
        }
    }
    // p(v) = w₀ q(v) + Σ_c w_c κ_c(v)                                              [V]
    let mut p: Vec<f64> = q.iter().map(|&v| w0 * v).collect();
    let mut copy_paths = Vec::with_capacity(paths.len());
    for (c, name) in paths.iter().enumerate() {
        let (mut applies, mut kappa_y, mut sources, mut cache) = (false, 0.0, Vec::new(), Vec::new());
        if let Some(caches) = caches {
            applies = caches.applies(c, row);
            let (tokens, kappa) = caches.support(c, row);
            for (&v, &k) in tokens.iter().zip(kappa) {
                p[v as usize] += weights[c] * k;
            }
            let mut support: Vec<(u32, f64)> = tokens.iter().copied().zip(kappa.iter().copied()).collect();
            support.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            cache = support
                .iter()
                .take(5)
                .map(|&(id, k)| Candidate { id, token: token_text(vocabulary, id), probability: k })
                .collect();
            kappa_y = caches.kappa(c, row, y);
            sources = caches
                .sources(c, row, y)
                .iter()
                .map(|&j| Source {
                    position: start + j,
                    token: token_text(vocabulary, ids[start + j]),
                    context: around(vocabulary, ids, start + j),
                })
                .collect();
        }
        copy_paths.push(CopyShare {
            name: name.clone(),
            rule: prepared.rule_text(name),
            applies,
            weight: weights[c],
            cache_probability: kappa_y,
            share: weights[c] * kappa_y,
            sources,
            cache,
        });
    }
    let probability = p[y as usize];
    let mut order: Vec<u32> = (0..p.len() as u32).collect();
    order.sort_by(|&a, &b| p[b as usize].total_cmp(&p[a as usize]).then(a.cmp(&b)));
    let rank = 1 + p.iter().filter(|&&v| v > probability).count();
    let top = order
        .iter()
        .take(TOP_PREDICTIONS)
        .map(|&id| Candidate { id, token: token_text(vocabulary, id), probability: p[id as usize] })
        .collect();
    let actual = Actual {
        id: y,
        token: token_text(vocabulary, y),
        probability,
        bits: -probability.log2(),
        rank,
        network: NetworkShare { weight: w0, softmax_probability: q[y as usize], share: w0 * q[y as usize] },
        copy_paths,
    };
    (actual, top, p.iter().sum())
}

/// Every layer's and head's attention row at `row`, with its rules and certificate.
fn attention_rows(
    prepared: &Prepared,
    vocabulary: &Vocabulary,
    scored: &Scored,
    row: usize,
    start: usize,
    ids: &[u32],
    epsilon: f64,
) -> Vec<HeadRow> {
    let heads = prepared.model.config.n_heads;
    let mut out = Vec::new();
    for (layer, layer_cache) in scored.cache.layers.iter().enumerate() {
        // λ of the layer's attention bias
        let layer_lambda = scored.rules.map_or(0.0, |(_, hook, _)| hook.lambda(layer));
        for head in 0..heads {
            // the window is the batch's only sequence
            let alpha = &layer_cache.attention.weights[head];
            let weights: Vec<f64> = (0..=row).map(|j| f64::from(alpha[[row, j]])).collect();
            // non-negative by definition; `abs` turns the −0 of a one-hot row into 0
            let entropy_bits = weights.iter().filter(|&&a| a > 0.0).map(|&a| -a * a.log2()).sum::<f64>().abs();
            let attended_at = |j: usize| Attended {
                position: start + j,
                token: token_text(vocabulary, ids[start + j]),
                weight: weights[j],
            };
            let mut order: Vec<usize> = (0..=row).collect();
            order.sort_by(|&a, &b| weights[b].total_cmp(&weights[a]).then(a.cmp(&b)));
            let attended = order.iter().take(TOP_ATTENDED).map(|&j| attended_at(j)).collect();
            let coverage = scored.rules.and_then(|(targets, hook, _)| {
                let combined = targets.at(layer, head, 0).filter(|rows| rows.covered(row))?;
                let fidelity: f64 = combined.targets(row).map(|j| weights[j]).sum();
                let covering: Vec<usize> = (0..prepared.rules.rules.len())
                    .filter(|&r| prepared.rules.rules[r].applies_to(layer, head) && targets.per_rule[r][0].covered(row))
                    .collect();
                // as the combined targets are formed: the covering rules of the highest priority unite
                let top = covering.iter().map(|&r| prepared.rules.rules[r].priority).max();
                let rules = covering
                    .iter()
                    .map(|&r| {
                        let rule = &prepared.rules.rules[r];
                        let own: Vec<usize> = targets.per_rule[r][0].targets(row).collect();
                        CoveringRule {
                            name: rule.name.clone(),
                            text: prepared.rule_text(&rule.name),
                            in_force: Some(rule.priority) == top,
                            fidelity: own.iter().map(|&j| weights[j]).sum(),
                            targets: own.iter().map(|&j| start + j).collect(),
                        }
                    })
                    .collect();
                let record = hook.record(layer, head, 0)?;
                let m = combined.count(row);
                let observation = RowObservation {
                    fidelity,
                    entropy_bits,
                    targets: m,
                    others: row + 1 - m,
                    delta: record.delta[row],
                    logit_range: record.logit_range[row],
                    lambda: hook.lambda(layer),
                    margin: hook.settings().margin,
                    strength: f64::from(combined.strength[row]),
                };
                let lambda_star = Some(observation.lambda_star(epsilon)).filter(|l| l.is_finite());
                Some(Coverage {
                    rules,
                    targets: combined.targets(row).map(attended_at).collect(),
                    strength: observation.strength,
                    fidelity,
                    lambda_star,
                    certified: fidelity >= 1.0 - epsilon,
                    bounds_hold: !observation.check(epsilon).any(),
                })
            });
            out.push(HeadRow { layer, head, lambda: layer_lambda, entropy_bits, attended, coverage });
        }
    }
    out
}

#[cfg(test)]
mod tests;
