//! The locality dial as an attention hook (METHOD §4): margin bias and temperature on covered rows,
//! and the group-sparsity penalty `λ·ρ·Ω` on their attention weights.

use std::sync::Mutex;

use ndarray::{ArrayView2, ArrayViewMut2};
use serde::{Deserialize, Serialize};

use super::targets::{BatchTargets, RowSets};
use crate::engine::attention::{AttentionHook, AttentionSite};
use crate::engine::Scalar;
use crate::{Error, Result};

/// The dial's constants.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DialSettings {
    /// `μ`, the margin in nats that λ = 1 subtracts from off-target logits (times the rule's strength).
    pub margin: f64,
    /// `τ₁`, the temperature at λ = 1; `τ(λ) = 1 + λ(τ₁ − 1)`. 1 disables it.
    pub temperature: f64,
    /// `ρ`, the weight of the group-sparsity penalty.
    pub penalty: f64,
}

impl Default for DialSettings {
    fn default() -> Self {
        DialSettings { margin: 12.0, temperature: 1.0, penalty: 0.5 }
    }
}

impl DialSettings {
    pub fn validate(&self) -> Result<()> {
        if !(self.margin >= 0.0 && self.margin.is_finite()) {
            return Err(Error::invalid("locality.margin", "must be a non-negative number of nats"));
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(Error::invalid("locality.temperature", "must be positive"));
        }
        if !(self.penalty >= 0.0 && self.penalty.is_finite()) {
            return Err(Error::invalid("locality.penalty", "must be non-negative"));
        }
        Ok(())
    }
}

/// Per covered row of one site, what the certificates of METHOD §6 need; `NaN` for uncovered rows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SiteRecord {
    /// `δ_i = ln(Σ_{j∉T} e^{s_ij/τ} / Σ_{j∈T} e^{s_ij/τ})` from the unbiased logits.
    pub delta: Vec<f64>,
    /// `max_j |s_ij/τ|` over `j ≤ i`.
    pub logit_range: Vec<f64>,
    /// `max_j |∂CE/∂α_ij|` over `j ≤ i`, when a backward pass ran.
    pub ce_grad_max: Vec<f64>,
}

pub struct LocalityHook<'a> {
    targets: &'a BatchTargets,
    /// λ of every layer.
    lambdas: Vec<f64>,
    settings: DialSettings,
    /// `ρ·λ_l / C` with `C` the covered rows of the batch over every site where rules act, so that the
    /// penalty is `λ·ρ·Ω` with `Ω` averaged over covered rows (METHOD §4).
    penalty_weight: Vec<f64>,
    covered_rows: usize,
    records: Option<Vec<Mutex<SiteRecord>>>,
}

impl<'a> LocalityHook<'a> {
    /// `record` keeps per-row data for metrics and certificates (evaluation); training passes `false`.
    pub fn new(targets: &'a BatchTargets, lambdas: Vec<f64>, settings: DialSettings, record: bool) -> Self {
        let layers = lambdas.len();
        let mut covered_rows = 0;
        for layer in 0..layers {
            for head in 0..targets.heads {
                for seq in 0..targets.batch {
                    covered_rows += targets.at(layer, head, seq).map_or(0, RowSets::covered_rows);
                }
            }
        }
        let penalty_weight = lambdas
            .iter()
            .map(|&l| if covered_rows == 0 { 0.0 } else { settings.penalty * l / covered_rows as f64 })
            .collect();
        let records = record.then(|| {
            (0..layers * targets.heads * targets.batch)
                .map(|_| {
                    let nan = vec![f64::NAN; targets.seq_len];
                    Mutex::new(SiteRecord { delta: nan.clone(), logit_range: nan.clone(), ce_grad_max: nan })
                })
                .collect()
        });
        LocalityHook { targets, lambdas, settings, penalty_weight, covered_rows, records }
    }

    pub fn lambda(&self, layer: usize) -> f64 {
        self.lambdas.get(layer).copied().unwrap_or(0.0)
    }

    /// `ρ·λ_l/C`, the weight of layer `layer`'s penalty on each covered row's `Ω_i`.
    pub fn penalty_weight(&self, layer: usize) -> f64 {
        self.penalty_weight.get(layer).copied().unwrap_or(0.0)
    }

    /// The batch's target sets the hook reads.
    pub fn targets(&self) -> &BatchTargets {
        self.targets
    }

    /// `τ(λ)` at a layer.
    pub fn temperature(&self, layer: usize) -> f64 {
        1.0 + self.lambda(layer) * (self.settings.temperature - 1.0)
    }

    pub fn settings(&self) -> DialSettings {
        self.settings
    }

    /// Covered rows summed over every site where rules act (the `C` of the penalty's average).
    pub fn covered_rows(&self) -> usize {
        self.covered_rows
    }

    fn record_index(&self, site: AttentionSite) -> usize {
        (site.layer * self.targets.heads + site.head) * self.targets.batch + site.sequence
    }

    /// What was recorded at a site, when recording.
    pub fn record(&self, layer: usize, head: usize, sequence: usize) -> Option<SiteRecord> {
        let index = self.record_index(AttentionSite { layer, head, sequence });
        let slot = self.records.as_ref()?.get(index)?;
        Some(slot.lock().map(|r| r.clone()).unwrap_or_else(|poisoned| poisoned.into_inner().clone()))
    }

    fn rows(&self, site: AttentionSite) -> Option<&RowSets> {
        self.targets.at(site.layer, site.head, site.sequence)
    }

    fn with_record(&self, site: AttentionSite, update: impl FnOnce(&mut SiteRecord)) {
        if let Some(slot) = self.records.as_ref().and_then(|r| r.get(self.record_index(site))) {
            let mut guard = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            update(&mut guard);
        }
    }
}

/// `ln Σ e^{v}` over the values, stable.
fn log_sum_exp(values: impl Iterator<Item = f64> + Clone) -> f64 {
    let max = values.clone().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + values.map(|v| (v - max).exp()).sum::<f64>().ln()
}

/// Keys `j ≤ i` outside a row's target set, ascending, read off the set's words 64 keys at a time.
fn off_target_keys(words: &[u64], i: usize) -> impl Iterator<Item = usize> + '_ {
    keys_where(words, i, |word| !word)
}

/// Keys `j ≤ i` in a row's target set, ascending.
fn target_keys(words: &[u64], i: usize) -> impl Iterator<Item = usize> + '_ {
    keys_where(words, i, |word| word)
}

/// The keys `j ≤ i` whose bits are set in `select(word)`, word by word.
fn keys_where(words: &[u64], i: usize, select: fn(u64) -> u64) -> impl Iterator<Item = usize> + '_ {
    let last_word = i / 64;
    words.iter().take(last_word + 1).enumerate().flat_map(move |(w, &word)| {
        let visible = if w == last_word { u64::MAX >> (63 - i % 64) } else { u64::MAX };
        let mut keys = select(word) & visible;
        std::iter::from_fn(move || {
            (keys != 0).then(|| {
                let bit = keys.trailing_zeros() as usize;
                keys &= keys - 1;
                w * 64 + bit
            })
        })
    })
}

impl<F: Scalar> AttentionHook<F> for LocalityHook<'_> {
    fn transform_scores(&self, site: AttentionSite, mut scores: ArrayViewMut2<F>) {
        let Some(rows) = self.rows(site) else { return };
        let lambda = self.lambda(site.layer);
        let tau = self.temperature(site.layer);
        if self.records.is_some() {
            self.with_record(site, |record| {
                for i in (0..rows.seq_len).filter(|&i| rows.covered(i)) {
                    let scaled = |j: usize| scores[[i, j]].as_f64() / tau;
                    let on = (0..=i).filter(|&j| rows.contains(i, j)).map(scaled);
                    let off = (0..=i).filter(|&j| !rows.contains(i, j)).map(scaled);
                    record.delta[i] = log_sum_exp(off) - log_sum_exp(on);
                    record.logit_range[i] = (0..=i).map(|j| scaled(j).abs()).fold(0.0, f64::max);
                }
            });
        }
        // λ = 0 leaves the plain transformer's numbers untouched, bit for bit
        if lambda == 0.0 {
            return;
        }
        let inv_tau = F::lit(1.0 / tau);
        let mut on_target = Vec::new();
        for i in (0..rows.seq_len).filter(|&i| rows.covered(i)) {
            // s'_ij = s_ij/τ − λ·μ·s_r·1[j ∉ T_i]: the whole visible row takes the off-target form in
            // one vectorised pass, then the (usually few) target keys get s_ij/τ from their saved
            // scores, the same bits as computing each key's own case
            let bias = F::lit(lambda * self.settings.margin * rows.strength[i] as f64);
            let mut row = scores.row_mut(i);
            let Some(row) = row.as_slice_mut() else { unreachable!("score rows are contiguous") };
            let visible = &mut row[..=i];
            on_target.clear();
            on_target.extend(target_keys(rows.row(i), i).map(|j| (j, visible[j])));
            visible.iter_mut().for_each(|value| *value = *value * inv_tau - bias);
            on_target.iter().for_each(|&(j, score)| visible[j] = score * inv_tau);
        }
    }

    fn transform_scores_backward(&self, site: AttentionSite, mut grad: ArrayViewMut2<F>) {
        let Some(rows) = self.rows(site) else { return };
        let lambda = self.lambda(site.layer);
        if lambda == 0.0 {
            return;
        }
        // the bias is constant; only the temperature scales the gradient
        let inv_tau = F::lit(1.0 / self.temperature(site.layer));
        for i in (0..rows.seq_len).filter(|&i| rows.covered(i)) {
            let mut row = grad.row_mut(i);
            let Some(row) = row.as_slice_mut() else { unreachable!("gradient rows are contiguous") };
            row[..=i].iter_mut().for_each(|g| *g *= inv_tau);
        }
    }

    fn attention_penalty(&self, site: AttentionSite, weights: ArrayView2<F>, mut grad: Option<ArrayViewMut2<F>>) -> F {
        let Some(rows) = self.rows(site) else { return F::zero() };
        if let Some(grad) = grad.as_ref().filter(|_| self.records.is_some()) {
            self.with_record(site, |record| {
                for i in (0..rows.seq_len).filter(|&i| rows.covered(i)) {
                    record.ce_grad_max[i] = (0..=i).map(|j| grad[[i, j]].as_f64().abs()).fold(0.0, f64::max);
                }
            });
        }
        let weight = self.penalty_weight.get(site.layer).copied().unwrap_or(0.0);
        if weight == 0.0 {
            return F::zero();
        }
        let blocks = &self.targets.blocks[site.sequence];
        let mut sizes = vec![0u32; self.targets.block_count];
        let mut squares = vec![0f64; self.targets.block_count];
        let mut group_scale = vec![0f64; self.targets.block_count];
        let mut total = 0.0;
        for i in (0..rows.seq_len).filter(|&i| rows.covered(i)) {
            sizes.fill(0);
            squares.fill(0.0);
            let alpha = weights.row(i);
            let Some(alpha) = alpha.as_slice() else { unreachable!("weight rows are contiguous") };
            // groups g_{i,k}: off-target keys j ≤ i by block, visited in ascending j (the order the
            // sums are defined in, so every machine adds them alike)
            for j in off_target_keys(rows.row(i), i) {
                let k = blocks[j] as usize;
                sizes[k] += 1;
                squares[k] += alpha[j].as_f64().powi(2);
            }
            // Ω_i = Σ_g √|g|·‖α_{i,g}‖₂
            total += sizes.iter().zip(&squares).map(|(&n, &sq)| (n as f64).sqrt() * sq.sqrt()).sum::<f64>();
            if let Some(grad) = grad.as_mut() {
                // ∂Ω_i/∂α_ij = √|g|·α_ij / max(‖α_{i,g}‖, 1e-12): one scale per group, not per key
                for (scale, (&n, &sq)) in group_scale.iter_mut().zip(sizes.iter().zip(&squares)) {
                    *scale = weight * (n as f64).sqrt() / sq.sqrt().max(1e-12);
                }
                let mut grad_row = grad.row_mut(i);
                let Some(grad_row) = grad_row.as_slice_mut() else { unreachable!("gradient rows are contiguous") };
                for j in off_target_keys(rows.row(i), i) {
                    grad_row[j] += F::lit(group_scale[blocks[j] as usize] * alpha[j].as_f64());
                }
            }
        }
        F::lit(weight * total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::attention::{attention_backward, attention_forward, AttentionShape, NoHook};
    use crate::engine::gradcheck::{assert_gradient, probe, random};
    use crate::locality::rules::{Block, Condition, Rule, RuleKind, RuleSet};
    use ndarray::{s, Ix2};

    fn rule(kind: RuleKind, strength: f64) -> Rule {
        Rule {
            name: "r".into(),
            kind,
            layers: None,
            heads: None,
            within: None,
            strength,
            priority: 0,
            from_step: None,
            until_step: None,
        }
    }

    /// Vocabulary 0..8; block 1 = {1, 2}, block 2 = {3}. The sequences give rows with empty target
    /// sets, a target set that is the whole visible row (token 1 at position 0 under own-block), and
    /// off-target groups of size one.
    fn fixture() -> (RuleSet, Vec<u32>) {
        let blocks = vec![
            Block { name: "a".into(), members: vec![1, 2], anchors: vec![], recruitable: false },
            Block { name: "b".into(), members: vec![3], anchors: vec![], recruitable: false },
        ];
        let rules = vec![
            rule(RuleKind::OwnBlock { block: 1 }, 1.0),
            rule(RuleKind::PreviousOccurrence { from: Condition::Block(2) }, 1.5),
            rule(RuleKind::BlockToBlock { from: 2, to: 1 }, 1.5),
        ];
        let tokens = vec![1, 0, 2, 3, 5, 3, 1, 4, /* second sequence */ 0, 3, 2, 2, 6, 3, 1, 7];
        (RuleSet::new(8, blocks, rules).unwrap(), tokens)
    }

    fn check_gradients(lambda: f64, settings: DialSettings) {
        let (set, tokens) = fixture();
        let shape = AttentionShape { batch: 2, seq_len: 8, heads: 2, layer: 0 };
        let targets = BatchTargets::new(&set, &tokens, 2, 8, 1, 2);
        let hook = LocalityHook::new(&targets, vec![lambda], settings, false);
        let (n, d) = (16, 4);
        let mut q = random(&[n, d], 1.0, 1).into_dimensionality::<Ix2>().unwrap();
        let k = random(&[n, d], 1.0, 2).into_dimensionality::<Ix2>().unwrap();
        let v = random(&[n, d], 1.0, 3).into_dimensionality::<Ix2>().unwrap();
        let upstream = probe(&[n, d], 4).into_dimensionality::<Ix2>().unwrap();
        let (_, cache, _) = attention_forward(q.view(), k.view(), v.view(), shape, &hook);
        let d_qkv = attention_backward(upstream.view(), q.view(), k.view(), v.view(), &cache, shape, &hook);
        let dq = d_qkv.slice(s![.., 0..d]).to_owned();
        assert_gradient("q through bias, temperature and penalty", &mut q.view_mut().into_dyn(), &dq.into_dyn(), |q| {
            let q = q.view().into_dimensionality::<Ix2>().unwrap();
            let (y, _, penalty) = attention_forward(q, k.view(), v.view(), shape, &hook);
            (y * &upstream).sum() + penalty
        });
    }

    #[test]
    fn bias_temperature_and_penalty_gradients_match_finite_differences() {
        check_gradients(0.7, DialSettings { margin: 3.0, temperature: 1.8, penalty: 0.9 });
        check_gradients(1.0, DialSettings { margin: 1.0, temperature: 0.6, penalty: 2.0 });
    }

    #[test]
    fn lambda_zero_is_the_plain_engine_bit_for_bit() {
        let (set, tokens) = fixture();
        let shape = AttentionShape { batch: 2, seq_len: 8, heads: 2, layer: 0 };
        let targets = BatchTargets::new(&set, &tokens, 2, 8, 1, 2);
        let hook =
            LocalityHook::new(&targets, vec![0.0], DialSettings { temperature: 3.0, ..DialSettings::default() }, true);
        let q = random(&[16, 4], 1.0, 1).mapv(|x| x as f32).into_dimensionality::<Ix2>().unwrap();
        let (with_hook, _, penalty) = attention_forward(q.view(), q.view(), q.view(), shape, &hook);
        let (plain, _, _) = attention_forward(q.view(), q.view(), q.view(), shape, &NoHook);
        assert_eq!(with_hook, plain);
        assert_eq!(penalty, 0.0);
    }

    #[test]
    fn target_and_off_target_keys_split_the_row_up_to_the_diagonal() {
        // rows that end inside, at and past a word boundary, with sets of every density
        let mut rng = crate::rng::Rng::new(5);
        for seq_len in [1usize, 63, 64, 65, 130, 200] {
            let mut rows = RowSets::new(seq_len);
            for i in 0..seq_len {
                for j in 0..=i {
                    if rng.below(4) == 0 {
                        rows.insert_for_test(i, j);
                    }
                }
            }
            for i in 0..seq_len {
                let off: Vec<usize> = (0..=i).filter(|&j| !rows.contains(i, j)).collect();
                let on: Vec<usize> = (0..=i).filter(|&j| rows.contains(i, j)).collect();
                assert_eq!(off_target_keys(rows.row(i), i).collect::<Vec<_>>(), off, "T = {seq_len}, row {i}");
                assert_eq!(target_keys(rows.row(i), i).collect::<Vec<_>>(), on, "T = {seq_len}, row {i}");
            }
        }
    }

    #[test]
    fn transformed_scores_are_each_keys_own_case_bit_for_bit() {
        // the two-pass bias against the definition s'_ij = s_ij/τ − λ·μ·s_r·1[j ∉ T_i], key by key
        let (set, tokens) = fixture();
        let targets = BatchTargets::new(&set, &tokens, 2, 8, 1, 2);
        for temperature in [1.0, 1.7] {
            let settings = DialSettings { temperature, ..DialSettings::default() };
            let hook = LocalityHook::new(&targets, vec![0.8], settings, false);
            for (head, sequence) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                let site = AttentionSite { layer: 0, head, sequence };
                let Some(rows) = targets.at(0, head, sequence) else { continue };
                let scores =
                    random(&[8, 8], 2.0, 9 + head as u64).mapv(|x| x as f32).into_dimensionality::<Ix2>().unwrap();
                let mut transformed = scores.clone();
                AttentionHook::<f32>::transform_scores(&hook, site, transformed.view_mut());
                let (inv_tau, lambda) = ((1.0 / hook.temperature(0)) as f32, hook.lambda(0));
                for i in 0..8 {
                    let bias = (lambda * settings.margin * rows.strength[i] as f64) as f32;
                    for j in 0..8 {
                        let expected = if !rows.covered(i) || j > i {
                            scores[[i, j]]
                        } else {
                            scores[[i, j]] * inv_tau - if rows.contains(i, j) { 0.0 } else { bias }
                        };
                        assert_eq!(
                            transformed[[i, j]].to_bits(),
                            expected.to_bits(),
                            "τ {temperature}, row {i}, key {j}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn penalty_value_matches_the_definition_on_a_hand_built_row() {
        // one sequence [1, 0, 3, 1]; own-block rule for block 1: row 3 has T = {0, 3},
        // off-target groups {1} (general block) and {2} (block 2), each of size one
        let (set, _) = fixture();
        let tokens = [1u32, 0, 3, 1];
        let only_own = RuleSet::new(8, set.blocks.clone(), vec![rule(RuleKind::OwnBlock { block: 1 }, 1.0)]).unwrap();
        let targets = BatchTargets::new(&only_own, &tokens, 1, 4, 1, 1);
        let settings = DialSettings { margin: 0.0, temperature: 1.0, penalty: 2.0 };
        let hook = LocalityHook::new(&targets, vec![0.5], settings, false);
        assert_eq!(hook.covered_rows(), 2); // rows 0 and 3
        let mut weights = ndarray::Array2::<f64>::zeros((4, 4));
        weights[[0, 0]] = 1.0;
        weights.row_mut(3).assign(&ndarray::array![0.1, 0.3, 0.4, 0.2]);
        let site = AttentionSite { layer: 0, head: 0, sequence: 0 };
        let value = AttentionHook::<f64>::attention_penalty(&hook, site, weights.view(), None);
        // Ω_0 = 0 (no off-target key), Ω_3 = √1·0.3 + √1·0.4; weight ρλ/C = 2·0.5/2
        assert!((value - 0.5 * 0.7).abs() < 1e-12, "{value}");
    }

    #[test]
    fn whole_model_gradient_with_the_dial_matches_finite_differences() {
        use crate::engine::gradcheck::{worst_discrepancy, TOLERANCE};
        use crate::engine::{Config, Gelu, Model};
        let (fixture_set, tokens) = fixture();
        let set = RuleSet::new(11, fixture_set.blocks, fixture_set.rules).unwrap();
        let config = Config {
            vocab_size: 11,
            ctx_len: 8,
            d_model: 8,
            n_heads: 2,
            n_layers: 2,
            d_ff: 12,
            ln_eps: 1e-5,
            tied: true,
            gelu: Gelu::Tanh,
            recruited_blocks: Vec::new(),
            copy_paths: Vec::new(),
        };
        let mut model = Model::<f64>::init(config, 3).unwrap();
        let mut rng = crate::rng::Rng::new(5);
        for (name, mut t) in model.params.named_mut() {
            let gain = name.ends_with("weight") && t.ndim() == 1;
            let (offset, std) = if t.ndim() == 2 {
                (0.0, 0.5)
            } else if gain {
                (1.0, 0.2)
            } else {
                (0.0, 0.2)
            };
            t.mapv_inplace(|_| offset + std * rng.normal());
        }
        let next: Vec<u32> = tokens.iter().map(|&t| (t * 3 + 1) % 11).collect();
        let targets = BatchTargets::new(&set, &tokens, 2, 8, 2, 2);
        let settings = DialSettings { margin: 2.0, temperature: 1.5, penalty: 1.0 };
        let hook = LocalityHook::new(&targets, vec![0.4, 0.9], settings, false);
        let (_, penalty, grads) = model.loss_and_grads(&tokens, &next, 2, 8, &hook, None);
        assert!(penalty > 0.0);
        let names =
            ["tok_emb", "pos_emb", "layers.0.attn.wq", "layers.0.attn.wk", "layers.1.attn.wv", "layers.0.ln1.weight"];
        for name in names {
            let index = model.params.named().iter().position(|(n, _)| n == name).unwrap();
            let analytic = grads.named()[index].1.to_owned();
            let mut probe_model = model.clone();
            let mut tensor = model.params.named()[index].1.to_owned();
            let worst = worst_discrepancy(&mut tensor.view_mut(), &analytic, 1, |perturbed| {
                probe_model.params.named_mut()[index].1.assign(perturbed);
                let cache = probe_model.forward(&tokens, 2, 8, &hook);
                probe_model.output_loss(&cache, &next, false, None).mean_nll + cache.penalty
            });
            assert!(worst.relative_error < TOLERANCE, "{name}: {worst:?}");
        }
    }
}
