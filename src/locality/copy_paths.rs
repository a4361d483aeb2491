//! From a rule set's copy rules to the engine's copy caches (METHOD §4): the model's copy paths are
//! named after the copy rules that feed them, and a path whose rule is not in force at a step (injected
//! later, withdrawn earlier, or not in this rule set) simply has no targets there.

use crate::engine::copy::CopyCaches;

use super::copy_targets::copy_targets;
use super::RuleSet;

/// The caches of one batch (`batch` sequences of `seq_len` inputs) for the model's copy paths
/// `paths`, in the model's order; `None` when the model has no copy path.
pub fn batch_caches(
    set: &RuleSet,
    paths: &[String],
    inputs: &[u32],
    batch: usize,
    seq_len: usize,
) -> Option<CopyCaches> {
    if paths.is_empty() {
        return None;
    }
    let by_rule = copy_targets(set, inputs, batch, seq_len); // [copy rule][row] → positions
    let rows = inputs.len();
    let mut strengths = Vec::with_capacity(paths.len());
    let mut targets = Vec::with_capacity(paths.len());
    for path in paths {
        match set.copy_rules.iter().position(|rule| &rule.name == path) {
            Some(c) => {
                strengths.push(set.copy_rules[c].strength);
                targets.push(by_rule[c].clone());
            }
            None => {
                strengths.push(1.0);
                targets.push(vec![Vec::new(); rows]);
            }
        }
    }
    Some(CopyCaches::new(inputs, strengths, &targets))
}

/// The copy rules of `set` that the model has no path for yet, by name, in the set's order.
pub fn missing_paths(set: &RuleSet, paths: &[String]) -> Vec<String> {
    set.copy_rules.iter().map(|rule| rule.name.clone()).filter(|name| !paths.contains(name)).collect()
}

/// What each copy path did at one λ (METHOD §4): its share of the prediction, how often its cache held
/// the target, and the bits it saved.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
pub struct CopyPathMetrics {
    pub name: String,
    /// Rows where the path's cache was not empty.
    pub applied_rows: usize,
    /// Mean copy weight `w_c` over those rows.
    #[serde(deserialize_with = "crate::json_float::f64_or_nan")]
    pub copy_share: f64,
    /// Share of those rows where the cache held the target (`κ_c(y) > 0`).
    #[serde(deserialize_with = "crate::json_float::f64_or_nan")]
    pub copy_hit_rate: f64,
    /// The code length of the scored text with this path's weight set to 0, minus the code length with
    /// it, in bits.
    #[serde(deserialize_with = "crate::json_float::f64_or_nan")]
    pub bits_saved: f64,
}

/// Sums over batches for [`CopyPathMetrics`].
#[derive(Clone, Debug, Default)]
pub struct CopyPathAccumulator {
    applied: Vec<usize>,
    share: Vec<f64>,
    hits: Vec<usize>,
    saved: Vec<f64>,
}

impl CopyPathAccumulator {
    pub fn new(paths: usize) -> Self {
        CopyPathAccumulator {
            applied: vec![0; paths],
            share: vec![0.0; paths],
            hits: vec![0; paths],
            saved: vec![0.0; paths],
        }
    }

    /// Adds one batch from what the output loss's mixture computed: `softmax_nll [N]` is `−ln q(y)`,
    /// `weights [N, C]` the copy weights `w_c`, `log_w0 [N]` the softmax's `ln w₀`.
    pub fn add(
        &mut self,
        caches: &CopyCaches,
        softmax_nll: &[f64],
        weights: ndarray::ArrayView2<f64>,
        log_w0: &[f64],
        targets: &[u32],
        lambda: f64,
    ) {
        let paths = caches.n_rules();
        let mut kappa = vec![0.0f64; paths];
        for (n, &y) in targets.iter().enumerate() {
            let applies = |c: usize| caches.applies(c, n) && lambda * caches.rule(c).strength > 0.0;
            if !(0..paths).any(applies) {
                continue;
            }
            for (c, k) in kappa.iter_mut().enumerate() {
                *k = if applies(c) { caches.kappa(c, n, y) } else { 0.0 };
            }
            // p = w₀ q(y) + Σ w_c κ_c(y); with path c's weight set to 0 the others renormalise over
            // 1 − w_c: p₋c = (w₀ q(y) + Σ_{c' ≠ c} w_c' κ_c'(y)) / (1 − w_c)
            let softmax = (log_w0[n] - softmax_nll[n]).exp();
            let copied = |skip: Option<usize>| {
                (0..paths).filter(|&c| Some(c) != skip).map(|c| weights[[n, c]] * kappa[c]).sum::<f64>()
            };
            let with_all = -(softmax + copied(None)).log2();
            for c in (0..paths).filter(|&c| applies(c)) {
                let w = weights[[n, c]];
                self.applied[c] += 1;
                self.share[c] += w;
                self.hits[c] += usize::from(kappa[c] > 0.0);
                self.saved[c] += -((softmax + copied(Some(c))) / (1.0 - w)).log2() - with_all;
            }
        }
    }

    pub fn finish(&self, paths: &[String]) -> Vec<CopyPathMetrics> {
        paths
            .iter()
            .enumerate()
            .map(|(c, name)| {
                let rows = self.applied[c];
                let per_row = |x: f64| if rows == 0 { f64::NAN } else { x / rows as f64 };
                CopyPathMetrics {
                    name: name.clone(),
                    applied_rows: rows,
                    copy_share: per_row(self.share[c]),
                    copy_hit_rate: per_row(self.hits[c] as f64),
                    bits_saved: self.saved[c],
                }
            })
            .collect()
    }
}
