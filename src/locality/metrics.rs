//! Metrics of METHOD §5 and the certificates of §6, computed in the same pass as the evaluation loss.

use ndarray::{Array1, Array2};
use ndarray_linalg::{Eigh, UPLO};
use serde::{Deserialize, Serialize};

use super::bounds::{quantiles, Certificates, GroupSparsity, RowObservation, ViolationCounts};
use super::hook::{DialSettings, LocalityHook};
use super::rules::RuleSet;
use super::score::{score, Conditions, RulesAt};
use super::targets::{BatchTargets, RowSets};
use crate::engine::eval::EvalResult;
use crate::engine::linalg::matmul;
use crate::engine::model::ForwardCache;
use crate::engine::Model;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SiteMetrics {
    pub layer: usize,
    pub head: usize,
    #[serde(deserialize_with = "crate::json_float::f64_or_nan")]
    pub entropy_bits: f64,
    /// `NaN` where no rule acts.
    #[serde(deserialize_with = "crate::json_float::f64_or_nan")]
    pub pointer_fidelity: f64,
    pub covered_rows: usize,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RuleMetrics {
    pub name: String,
    pub covered_rows: usize,
    #[serde(deserialize_with = "crate::json_float::f64_or_nan")]
    pub pointer_fidelity: f64,
    #[serde(deserialize_with = "crate::json_float::f64_or_nan")]
    pub pointer_hit_rate: f64,
    /// Fidelity of the rule's own targets at every (layer, head), in `layer·H + head` order; `NaN`
    /// where the rule does not act.
    #[serde(default)]
    #[serde(deserialize_with = "crate::json_float::vec_or_nan")]
    pub fidelity_by_site: Vec<f64>,
}

/// Everything measured at one λ.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LocalityMetrics {
    #[serde(deserialize_with = "crate::json_float::f64_or_nan")]
    pub lambda: f64,
    /// λ of each layer (differs from `lambda` under a progressive schedule).
    #[serde(deserialize_with = "crate::json_float::vec_or_nan")]
    pub layer_lambdas: Vec<f64>,
    pub language_model: EvalResult,
    /// Mean attention entropy over every query row of every layer and head, in bits.
    #[serde(deserialize_with = "crate::json_float::f64_or_nan")]
    pub entropy_bits: f64,
    /// The same over rows a rule covers.
    #[serde(deserialize_with = "crate::json_float::f64_or_nan")]
    pub covered_entropy_bits: f64,
    /// Mean mass on `T_i` over covered rows.
    #[serde(deserialize_with = "crate::json_float::f64_or_nan")]
    pub pointer_fidelity: f64,
    /// Share of covered rows whose largest weight lies in `T_i`.
    #[serde(deserialize_with = "crate::json_float::f64_or_nan")]
    pub pointer_hit_rate: f64,
    pub covered_rows: usize,
    /// Mean mass a block-token query puts on its own block.
    #[serde(deserialize_with = "crate::json_float::f64_or_nan")]
    pub block_concentration: f64,
    pub per_site: Vec<SiteMetrics>,
    pub per_rule: Vec<RuleMetrics>,
    /// Participation ratio `(Σe)²/Σe²` of the hidden-state covariance after each layer.
    #[serde(deserialize_with = "crate::json_float::vec_or_nan")]
    pub participation_ratio: Vec<f64>,
    pub certificates: Certificates,
    /// Per copy path (METHOD §4): copy share, copy hit rate and bits saved at this λ.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copy_paths: Vec<super::copy_paths::CopyPathMetrics>,
}

#[derive(Default, Clone)]
struct Mean {
    sum: f64,
    count: usize,
}

impl Mean {
    fn add(&mut self, value: f64) {
        self.sum += value;
        self.count += 1;
    }
    fn value(&self) -> f64 {
        if self.count == 0 {
            f64::NAN
        } else {
            self.sum / self.count as f64
        }
    }
}

/// Running `Σx` and `Σxxᵀ` of hidden states.
struct Covariance {
    count: usize,
    sum: Array1<f64>,
    outer: Array2<f64>,
}

impl Covariance {
    fn new(d: usize) -> Self {
        Covariance { count: 0, sum: Array1::zeros(d), outer: Array2::zeros((d, d)) }
    }

    fn add(&mut self, states: &Array2<f32>) {
        let x = states.mapv(f64::from);
        self.count += x.nrows();
        self.sum += &x.sum_axis(ndarray::Axis(0));
        self.outer += &matmul(x.t(), x.view());
    }

    fn participation_ratio(&self) -> f64 {
        if self.count < 2 {
            return f64::NAN;
        }
        let n = self.count as f64;
        let mean = &self.sum / n;
        let mut cov = &self.outer / n;
        for i in 0..mean.len() {
            for j in 0..mean.len() {
                cov[[i, j]] -= mean[i] * mean[j];
            }
        }
        match cov.eigh(UPLO::Lower) {
            Ok((eigenvalues, _)) => {
                let e = eigenvalues.mapv(|v: f64| v.max(0.0));
                let total = e.sum();
                let squares = e.mapv(|v| v * v).sum();
                if squares > 0.0 {
                    total * total / squares
                } else {
                    f64::NAN
                }
            }
            Err(_) => f64::NAN,
        }
    }
}

struct Accumulator {
    layers: usize,
    heads: usize,
    entropy: Mean,
    covered_entropy: Mean,
    fidelity: Mean,
    hits: Mean,
    concentration: Mean,
    site_entropy: Vec<Mean>,
    site_fidelity: Vec<Mean>,
    rule_fidelity: Vec<Mean>,
    rule_hits: Vec<Mean>,
    /// `[rule·sites + layer·H + head]`.
    rule_site_fidelity: Vec<Mean>,
    covariances: Vec<Covariance>,
    lambda_stars: Vec<f64>,
    certified: Mean,
    logit_bound: f64,
    weight_only_terms: Vec<(f64, f64)>,
    entropy_bound: Mean,
    violations: ViolationCounts,
    u_values: Vec<f64>,
}

fn entropy_bits(row: &[f32]) -> f64 {
    row.iter().filter(|&&a| a > 0.0).map(|&a| -(a as f64) * (a as f64).log2()).sum()
}

fn mass_on(row: &[f32], rows: &RowSets, i: usize) -> f64 {
    rows.targets(i).map(|j| row[j] as f64).sum()
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (j, &a) in row.iter().enumerate() {
        if a > row[best] {
            best = j;
        }
    }
    best
}

impl Accumulator {
    fn new(layers: usize, heads: usize, rules: usize, d: usize) -> Self {
        Accumulator {
            layers,
            heads,
            entropy: Mean::default(),
            covered_entropy: Mean::default(),
            fidelity: Mean::default(),
            hits: Mean::default(),
            concentration: Mean::default(),
            site_entropy: vec![Mean::default(); layers * heads],
            site_fidelity: vec![Mean::default(); layers * heads],
            rule_fidelity: vec![Mean::default(); rules],
            rule_hits: vec![Mean::default(); rules],
            rule_site_fidelity: vec![Mean::default(); rules * layers * heads],
            covariances: (0..layers).map(|_| Covariance::new(d)).collect(),
            lambda_stars: Vec::new(),
            certified: Mean::default(),
            logit_bound: 0.0,
            weight_only_terms: Vec::new(),
            entropy_bound: Mean::default(),
            violations: ViolationCounts::default(),
            u_values: Vec::new(),
        }
    }

    fn add(
        &mut self,
        cache: &ForwardCache<f32>,
        set: &RuleSet,
        targets: &BatchTargets,
        hook: &LocalityHook,
        epsilon: f64,
    ) {
        let settings = hook.settings();
        for (layer, layer_cache) in cache.layers.iter().enumerate() {
            self.covariances[layer].add(&layer_cache.output);
            let lambda = hook.lambda(layer);
            for sequence in 0..cache.batch {
                let blocks = &targets.blocks[sequence];
                for head in 0..self.heads {
                    let site = layer * self.heads + head;
                    let alpha = &layer_cache.attention.weights[sequence * self.heads + head];
                    let combined = targets.at(layer, head, sequence);
                    let record = hook.record(layer, head, sequence);
                    for i in 0..cache.seq_len {
                        let row = &alpha.row(i).to_slice().expect("attention rows are contiguous")[..=i];
                        let h = entropy_bits(row);
                        self.entropy.add(h);
                        self.site_entropy[site].add(h);
                        if blocks[i] != 0 {
                            let own: f64 = (0..=i).filter(|&j| blocks[j] == blocks[i]).map(|j| row[j] as f64).sum();
                            self.concentration.add(own);
                        }
                        let Some(rows) = combined.filter(|r| r.covered(i)) else { continue };
                        let fidelity = mass_on(row, rows, i);
                        self.covered_entropy.add(h);
                        self.fidelity.add(fidelity);
                        self.site_fidelity[site].add(fidelity);
                        self.hits.add(if rows.contains(i, argmax(row)) { 1.0 } else { 0.0 });
                        let Some(record) = record.as_ref() else { continue };
                        let m = rows.count(i);
                        let observation = RowObservation {
                            fidelity,
                            entropy_bits: h,
                            targets: m,
                            others: i + 1 - m,
                            delta: record.delta[i],
                            logit_range: record.logit_range[i],
                            lambda,
                            margin: settings.margin,
                            strength: rows.strength[i] as f64,
                        };
                        self.violations.add(observation.check(epsilon));
                        self.lambda_stars.push(observation.lambda_star(epsilon));
                        self.certified.add(if fidelity >= 1.0 - epsilon { 1.0 } else { 0.0 });
                        self.entropy_bound.add(observation.entropy_bound());
                        self.logit_bound = self.logit_bound.max(record.logit_range[i]);
                        if observation.others > 0 {
                            let denominator = settings.margin * observation.strength;
                            let ratio = (observation.others as f64 / m as f64).ln() + ((1.0 - epsilon) / epsilon).ln();
                            self.weight_only_terms.push((ratio, denominator));
                        }
                        if record.ce_grad_max[i].is_finite() {
                            // U_i in the units of METHOD §6: the penalty weighs each row by λρ/C, so the
                            // row's threshold λρ/C > 2·max|∂CE/∂α| reads λρ > 2·C·max|∂CE/∂α|
                            self.u_values.push(record.ce_grad_max[i] * hook.covered_rows() as f64);
                        }
                    }
                }
            }
            for (r, rule) in set.rules.iter().enumerate() {
                for head in (0..self.heads).filter(|&h| rule.applies_to(layer, h)) {
                    for sequence in 0..cache.batch {
                        let rows = &targets.per_rule[r][sequence];
                        let alpha = &layer_cache.attention.weights[sequence * self.heads + head];
                        for i in (0..cache.seq_len).filter(|&i| rows.covered(i)) {
                            let row = &alpha.row(i).to_slice().expect("attention rows are contiguous")[..=i];
                            let fidelity = mass_on(row, rows, i);
                            self.rule_fidelity[r].add(fidelity);
                            self.rule_site_fidelity[r * self.layers * self.heads + layer * self.heads + head]
                                .add(fidelity);
                            self.rule_hits[r].add(if rows.contains(i, argmax(row)) { 1.0 } else { 0.0 });
                        }
                    }
                }
            }
        }
    }

    fn finish(
        mut self,
        set: &RuleSet,
        lambda: f64,
        layer_lambdas: Vec<f64>,
        lm: EvalResult,
        epsilon: f64,
        penalty: f64,
    ) -> LocalityMetrics {
        let levels = [0.5, 0.9, 0.99, 1.0];
        let q = quantiles(&mut self.lambda_stars, &levels);
        let logit_bound = self.logit_bound;
        let weight_only_lambda = self
            .weight_only_terms
            .iter()
            .map(
                |&(ratio, denominator)| {
                    if denominator > 0.0 {
                        (2.0 * logit_bound + ratio) / denominator
                    } else {
                        f64::INFINITY
                    }
                },
            )
            .fold(f64::NEG_INFINITY, f64::max);
        let group_sparsity = (!self.u_values.is_empty()).then(|| {
            let max_lambda = layer_lambdas.iter().copied().fold(0.0, f64::max);
            let above = self.u_values.iter().filter(|&&u| max_lambda * penalty > 2.0 * u).count();
            let rows = self.u_values.len();
            let uq = quantiles(&mut self.u_values, &levels);
            GroupSparsity {
                rows,
                u_quantiles: [uq[0], uq[1], uq[2], uq[3]],
                lambda_threshold: if penalty > 0.0 { 2.0 * uq[3] / penalty } else { f64::INFINITY },
                share_above_threshold: above as f64 / rows as f64,
            }
        });
        let per_site = (0..self.layers * self.heads)
            .map(|site| SiteMetrics {
                layer: site / self.heads,
                head: site % self.heads,
                entropy_bits: self.site_entropy[site].value(),
                pointer_fidelity: self.site_fidelity[site].value(),
                covered_rows: self.site_fidelity[site].count,
            })
            .collect();
        let per_rule = set
            .rules
            .iter()
            .enumerate()
            .map(|(r, rule)| RuleMetrics {
                name: rule.name.clone(),
                covered_rows: self.rule_fidelity[r].count,
                pointer_fidelity: self.rule_fidelity[r].value(),
                pointer_hit_rate: self.rule_hits[r].value(),
                fidelity_by_site: (0..self.layers * self.heads)
                    .map(|site| self.rule_site_fidelity[r * self.layers * self.heads + site].value())
                    .collect(),
            })
            .collect();
        LocalityMetrics {
            lambda,
            layer_lambdas,
            copy_paths: Vec::new(),
            language_model: lm,
            entropy_bits: self.entropy.value(),
            covered_entropy_bits: self.covered_entropy.value(),
            pointer_fidelity: self.fidelity.value(),
            pointer_hit_rate: self.hits.value(),
            covered_rows: self.fidelity.count,
            block_concentration: self.concentration.value(),
            per_site,
            per_rule,
            participation_ratio: self.covariances.iter().map(Covariance::participation_ratio).collect(),
            certificates: Certificates {
                epsilon,
                rows: self.certified.count,
                lambda_star_quantiles: [q[0], q[1], q[2], q[3]],
                share_certified: self.certified.value(),
                logit_bound,
                weight_only_lambda,
                mean_entropy_bound_bits: self.entropy_bound.value(),
                mean_entropy_bits: self.covered_entropy.value(),
                violations: self.violations,
                group_sparsity,
            },
        }
    }
}

/// How to evaluate across the dial.
#[derive(Clone, Debug)]
pub struct DialEvaluation<'a> {
    pub rules: &'a RuleSet,
    pub settings: DialSettings,
    /// `β` of the progressive per-layer schedule, if any.
    pub progressive_beta: Option<f64>,
    pub epsilon: f64,
    /// Batches (from the start) that also run a backward pass to measure `U_i`.
    pub certificate_batches: usize,
    pub batch_size: usize,
}

/// Scores `ids` at one λ with the rules' bias in place, measuring every metric and certificate in the
/// same pass, through [`super::score::score`].
pub fn evaluate_at(model: &Model<f32>, ids: &[u32], lambda: f64, eval: &DialEvaluation) -> LocalityMetrics {
    let config = &model.config;
    // the penalty is not part of the evaluation loss; with ρ = 0 the backward pass sees ∂CE/∂α alone
    let rules = RulesAt::new(eval.rules, lambda, config.n_layers, eval.progressive_beta, eval.settings)
        .without_penalty()
        .recording();
    let layer_lambdas = rules.layer_lambdas.clone();
    let mut acc = Accumulator::new(config.n_layers, config.n_heads, eval.rules.rules.len(), config.d_model);
    let mut copy_acc = super::copy_paths::CopyPathAccumulator::new(config.copy_paths.len());
    let conditions = Conditions::Rules(rules);
    let lm = score(model, ids, eval.batch_size, &conditions, eval.certificate_batches, |scored| {
        let Some((batch_targets, hook, copy)) = scored.rules else { return };
        let loss = &scored.loss;
        if let (Some(caches), Some(mixed)) = (copy, loss.copy.as_ref()) {
            let softmax_nll: Vec<f64> = mixed.softmax_nll.iter().map(|&v| f64::from(v)).collect();
            let weights = mixed.weights.mapv(f64::from);
            copy_acc.add(caches, &softmax_nll, weights.view(), &mixed.log_w0, &scored.batch.targets, lambda);
        }
        if let (Some(dh), Some(dw)) = (loss.d_hidden.as_ref(), loss.d_weight_t.as_ref()) {
            model.backward(&scored.cache, dh.view(), dw.view().into(), hook);
        }
        acc.add(&scored.cache, eval.rules, batch_targets, hook, eval.epsilon);
    });
    let mut metrics = acc.finish(eval.rules, lambda, layer_lambdas, lm, eval.epsilon, eval.settings.penalty);
    metrics.copy_paths = copy_acc.finish(&config.copy_paths);
    metrics
}
