//! A batch's rules in the form the device step takes them (METHOD §4): per layer, the locality dial's
//! covered rows, target sets, margins, temperature and penalty weight; per position, its block (the
//! penalty's groups); and the copy paths' per-row inputs. The host builds them from the compiled rules
//! once per batch (in the rules' own layer, above the engine); [`BatchRules::validate`] checks them against the
//! step's shapes before anything is uploaded.
//!
//! Rows of the attention weights are ordered as the step stores them, `(sequence, head, query)`: row
//! `(b·H + h)·T + i` of `[B·H·T, T]`.

/// One layer's attention under the dial, where it acts (`λ_l > 0` and some rule applies at a head).
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionRules {
    /// `1/τ(λ_l)`.
    pub inv_tau: f32,
    /// `ρ·λ_l/C` (`C` the batch's covered rows over every site): the penalty's weight, 0 when off.
    pub penalty_weight: f32,
    /// `[B·H·T]` 1 where the row is covered (its rules' strength is positive).
    pub covered: Vec<u8>,
    /// `[B·H·T·T]` 1 where key `j` is in row `i`'s target set.
    pub targets: Vec<u8>,
    /// `[B·H·T]` `λ_l·μ·s_i`, the margin subtracted from the row's off-target scores; 0 where uncovered.
    pub bias: Vec<f32>,
}

/// The copy paths of one batch (METHOD §4, "Copy paths"): what the gates need besides the hidden state.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyRules {
    /// The dial `λ` the mixture acts at.
    pub lambda: f32,
    /// `[C]` each copy rule's strength `s_c`.
    pub strength: Vec<f32>,
    /// `[N·C]` 1 where rule `c` has targets at row `n`.
    pub active: Vec<u8>,
    /// `[N·C]` `κ_{c,n}(y_n)`, the share of rule `c`'s cache at row `n` held by the row's target token.
    pub kappa_target: Vec<f32>,
}

/// Everything the rules change in one training batch.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BatchRules {
    /// One per layer; `None` where the dial leaves the layer's attention as it is.
    pub layers: Vec<Option<AttentionRules>>,
    /// `[B·T]` the block of every position (0 the general block).
    pub blocks: Vec<u32>,
    /// Blocks including the general block 0.
    pub block_count: usize,
    /// `None` without copy paths, or where the batch's copy rules cannot act.
    pub copy: Option<CopyRules>,
}

/// The step's shapes, as a [`BatchRules`] must match them.
#[derive(Debug, Clone, Copy)]
pub struct RuleShape {
    pub batch: usize,
    pub seq_len: usize,
    pub heads: usize,
    pub layers: usize,
    pub copy_paths: usize,
}

impl BatchRules {
    /// Whether any layer's attention is under the dial.
    pub fn acts_on_attention(&self) -> bool {
        self.layers.iter().any(Option::is_some)
    }

    /// Refuses rules built for another shape, or with values no kernel should see.
    pub fn validate(&self, shape: RuleShape) -> Result<(), String> {
        let RuleShape { batch, seq_len, heads, layers, copy_paths } = shape;
        let (rows, n) = (batch * heads * seq_len, batch * seq_len);
        let wrong = |what: &str, got: usize, want: usize| {
            (got != want).then(|| format!("the batch's rules hold {got} {what} where the step has {want}"))
        };
        let mut problems = vec![wrong("layers", self.layers.len(), layers)];
        if self.acts_on_attention() {
            problems.push(wrong("block positions", self.blocks.len(), n));
            if let Some(&bad) = self.blocks.iter().find(|&&k| k as usize >= self.block_count) {
                problems.push(Some(format!("block {bad} of {} in the batch's rules", self.block_count)));
            }
        }
        for (layer, rules) in self.layers.iter().enumerate() {
            let Some(rules) = rules else { continue };
            let at = |what: &str| format!("layer {layer}'s {what}");
            problems.push(wrong(&at("covered rows"), rules.covered.len(), rows));
            problems.push(wrong(&at("margins"), rules.bias.len(), rows));
            problems.push(wrong(&at("target entries"), rules.targets.len(), rows * seq_len));
            let finite = rules.inv_tau.is_finite() && rules.inv_tau > 0.0 && rules.penalty_weight.is_finite();
            if !finite || rules.bias.iter().any(|b| !b.is_finite()) {
                problems.push(Some(at("temperature, margins or penalty weight are not finite")));
            }
        }
        if let Some(copy) = &self.copy {
            problems.push(wrong("copy strengths", copy.strength.len(), copy_paths));
            problems.push(wrong("copy rule activities", copy.active.len(), n * copy_paths));
            problems.push(wrong("copy target shares", copy.kappa_target.len(), n * copy_paths));
            let in_range = copy.kappa_target.iter().all(|k| (0.0..=1.0).contains(k));
            let finite = copy.lambda.is_finite() && copy.strength.iter().all(|s| s.is_finite() && *s >= 0.0);
            if !in_range || !finite || copy.lambda < 0.0 {
                problems.push(Some("the copy rules' λ, strengths or target shares are out of range".into()));
            }
        }
        match problems.into_iter().flatten().next() {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }
}
