//! One batch's compiled rules in the form the device step takes them ([`BatchRules`]): the hook's
//! covered rows, target sets, margins, temperatures and penalty weights laid out as the step's attention
//! weights are, and the copy caches reduced to what the mixture reads at each row's target token.
//! Every number is the hook's or the caches' own, so the device computes what the CPU engine computes.

use crate::engine::copy::CopyCaches;
use crate::engine::cuda::batch_rules::{AttentionRules, BatchRules, CopyRules};

use super::targets::RowSets;
use super::LocalityHook;

/// The device form of a batch's rules: the locality `hook` of its targets (which fixes each layer's λ,
/// temperature and penalty weight), its copy caches with the dial `λ` they act at, and `next [N]`,
/// the batch's target tokens.
pub fn device_rules(hook: &LocalityHook, copy: Option<(&CopyCaches, f64)>, next: &[u32], layers: usize) -> BatchRules {
    let targets = hook.targets();
    let (batch, seq_len, heads) = (targets.batch, targets.seq_len, targets.heads);
    let margin = hook.settings().margin;
    // a target set is shared by every site with the same applicable rules: laid out once per group
    let mut laid_out: Vec<Option<Vec<u8>>> = vec![None; targets.combined.len() * batch];
    let mut layer_rules = Vec::with_capacity(layers);
    for layer in 0..layers {
        let lambda = hook.lambda(layer);
        let groups: Vec<Option<usize>> =
            (0..heads).map(|head| targets.site_group.get(layer * heads + head).copied().flatten()).collect();
        // λ = 0 leaves a layer's attention untouched, as the hook does
        if lambda == 0.0 || groups.iter().all(Option::is_none) {
            layer_rules.push(None);
            continue;
        }
        let rows = batch * heads * seq_len;
        let mut rules = AttentionRules {
            inv_tau: (1.0 / hook.temperature(layer)) as f32,
            penalty_weight: hook.penalty_weight(layer) as f32,
            covered: vec![0; rows],
            targets: vec![0; rows * seq_len],
            bias: vec![0.0; rows],
        };
        for sequence in 0..batch {
            for (head, group) in groups.iter().enumerate() {
                let Some(group) = *group else { continue };
                let sets = &targets.combined[group][sequence];
                let first_row = (sequence * heads + head) * seq_len;
                for i in (0..seq_len).filter(|&i| sets.covered(i)) {
                    rules.covered[first_row + i] = 1;
                    rules.bias[first_row + i] = (lambda * margin * f64::from(sets.strength[i])) as f32;
                }
                let keys = laid_out[group * batch + sequence].get_or_insert_with(|| key_bytes(sets));
                rules.targets[first_row * seq_len..(first_row + seq_len) * seq_len].copy_from_slice(keys);
            }
        }
        layer_rules.push(Some(rules));
    }
    let blocks = targets.blocks.iter().flat_map(|sequence| sequence.iter().map(|&k| u32::from(k))).collect();
    BatchRules {
        layers: layer_rules,
        blocks,
        block_count: targets.block_count,
        copy: copy.and_then(|(caches, lambda)| copy_rules(caches, lambda, next)),
    }
}

/// `[T·T]` 1 where key `j ≤ i` is in row `i`'s target set.
fn key_bytes(sets: &RowSets) -> Vec<u8> {
    let t = sets.seq_len;
    let mut bytes = vec![0u8; t * t];
    for i in 0..t {
        for j in (0..=i).filter(|&j| sets.contains(i, j)) {
            bytes[i * t + j] = 1;
        }
    }
    bytes
}

/// The copy rules' inputs to the gates, or `None` where no rule can act on any row (`λ·s_c = 0` or no
/// targets), which leaves the plain softmax, as in the CPU engine.
fn copy_rules(caches: &CopyCaches, lambda: f64, next: &[u32]) -> Option<CopyRules> {
    let (rows, rules) = (caches.rows(), caches.n_rules());
    let mut copy = CopyRules {
        lambda: lambda as f32,
        strength: (0..rules).map(|c| caches.rule(c).strength as f32).collect(),
        active: vec![0; rows * rules],
        kappa_target: vec![0.0; rows * rules],
    };
    let mut any = false;
    for (n, &y) in next.iter().enumerate().take(rows) {
        for c in (0..rules).filter(|&c| lambda * caches.rule(c).strength > 0.0 && caches.applies(c, n)) {
            any = true;
            copy.active[n * rules + c] = 1;
            copy.kappa_target[n * rules + c] = caches.kappa(c, n, y) as f32;
        }
    }
    any.then_some(copy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cuda::host::HostDevice;
    use crate::engine::cuda::step::DeviceModel;
    use crate::engine::model::tests::tiny_config;
    use crate::engine::{Grads, Model};
    use crate::locality::rules::{Block, Condition, Rule, RuleKind, RuleSet};
    use crate::locality::{DialSettings, RulesAt};
    use crate::rng::Rng;

    const BATCH: usize = 2;
    const SEQ_LEN: usize = 6;

    fn rule(name: &str, kind: RuleKind, strength: f64, within: Option<usize>) -> Rule {
        Rule {
            name: name.into(),
            kind,
            layers: None,
            heads: None,
            within,
            strength,
            priority: 0,
            from_step: None,
            until_step: None,
        }
    }

    /// Blocks `a = {1, 2}` and `b = {3}`; attention rules at every site but one (the block-to-block rule
    /// acts at layer 1, head 0 only, so sites differ in their target sets); two copy rules.
    fn rules() -> RuleSet {
        let blocks = vec![
            Block { name: "a".into(), members: vec![1, 2], anchors: vec![], recruitable: false },
            Block { name: "b".into(), members: vec![3], anchors: vec![], recruitable: false },
        ];
        let mut to_block = rule("to-a", RuleKind::BlockToBlock { from: 2, to: 1 }, 1.5, None);
        (to_block.layers, to_block.heads) = (Some(vec![1]), Some(vec![0]));
        let attention = vec![
            rule("own", RuleKind::OwnBlock { block: 1 }, 1.0, None),
            rule("previous", RuleKind::PreviousOccurrence { from: Condition::Block(2) }, 1.5, None),
            to_block,
        ];
        let copy = vec![
            rule("copy-a", RuleKind::AnyToBlock { to: 1 }, 1.0, Some(4)),
            rule("copy-previous", RuleKind::PreviousOccurrence { from: Condition::Block(2) }, 2.0, Some(5)),
        ];
        RuleSet::new(11, blocks, attention).unwrap().with_copy_rules(copy).unwrap()
    }

    /// The tiny model with both copy paths and two recruited blocks, weights ten times the
    /// initialisation's so that attention is far from uniform and the copy gates open on some rows.
    fn model() -> Model<f32> {
        let mut model = Model::<f32>::init(tiny_config(false), 5).unwrap();
        model.add_block("first", &[2, 9]).unwrap();
        model.add_block("second", &[5]).unwrap();
        model.add_copy_path("copy-a").unwrap();
        model.add_copy_path("copy-previous").unwrap();
        let mut rng = Rng::new(31);
        for (name, mut tensor) in model.params.named_mut() {
            // the gates start shut (b = −6); opened near b = 0 their gradient is not negligible
            let (scale, shift) = if name == "copy.bias" { (0.0, 0.5) } else { (10.0, 0.0) };
            tensor.mapv_inplace(|w| w * scale + shift + 0.05 * rng.normal() as f32);
        }
        model
    }

    /// Sequences with block members, repeats and tokens of both recruited blocks.
    fn batch() -> (Vec<u32>, Vec<u32>) {
        let tokens = vec![1, 3, 2, 3, 5, 1, /* second */ 9, 3, 1, 2, 3, 0];
        let next = vec![3, 2, 3, 1, 1, 2, /* second */ 3, 1, 2, 3, 2, 7];
        (tokens, next)
    }

    fn settings() -> DialSettings {
        DialSettings { margin: 2.0, temperature: 0.7, penalty: 0.5 }
    }

    /// A batch's `(loss, penalty, gradients)`.
    type Computed = (f64, f64, Grads<f32>);

    /// What the CPU engine and the host device compute for the batch at `lambda`, in that order.
    fn both(model: &Model<f32>, lambda: f64) -> (Computed, Computed) {
        let set = rules();
        let (tokens, next) = batch();
        let at = RulesAt::new(&set, lambda, model.config.n_layers, Some(0.5), settings());
        let targets = at.targets(model, &tokens, BATCH, SEQ_LEN);
        let hook = at.hook(&targets);
        let caches = at.copy_caches(model, &tokens, BATCH, SEQ_LEN);
        let copy = caches.as_ref().map(|c| (c, lambda));
        let (loss, penalty, grads) = model.loss_and_grads(&tokens, &next, BATCH, SEQ_LEN, &hook, copy);
        let on_device = device_rules(&hook, copy, &next, model.config.n_layers);
        let mut device = DeviceModel::new(HostDevice::new(), model, BATCH, SEQ_LEN).unwrap();
        let device_loss = device.loss_and_grads(&tokens, &next, Some(&on_device)).unwrap();
        let device_grads = device.gradients().unwrap();
        ((f64::from(loss), f64::from(penalty), grads), (device_loss.cross_entropy, device_loss.penalty, device_grads))
    }

    fn largest(tensor: &ndarray::ArrayViewD<f32>) -> f64 {
        tensor.iter().fold(0.0f64, |m, &g| m.max(f64::from(g.abs())))
    }

    /// As in the plain step's test (`engine/cuda/step_tests.rs`): f32 sums in another order stay below
    /// 1e-5 of a tensor's scale through two layers; a missing or misplaced term moves a gradient by its
    /// own size.
    const RELATIVE: f64 = 1e-4;

    #[test]
    fn under_rules_the_device_step_gives_the_cpu_engine_s_loss_penalty_and_every_gradient() {
        let model = model();
        let ((loss, penalty, grads), (device_loss, device_penalty, device_grads)) = both(&model, 0.6);
        assert!(penalty > 1e-3, "the penalty acts: {penalty}");
        assert!((device_loss - loss).abs() <= RELATIVE * loss, "loss {device_loss} vs {loss}");
        assert!((device_penalty - penalty).abs() <= RELATIVE * penalty, "penalty {device_penalty} vs {penalty}");
        let model_largest = grads.named().iter().map(|(_, t)| largest(t)).fold(0.0, f64::max);
        for ((name, want), (_, got)) in grads.named().into_iter().zip(device_grads.named()) {
            let scale = largest(&want).max(1e-3 * model_largest);
            // the copy gates and block embeddings must carry gradient for the comparison to mean anything
            if name.starts_with("copy") || name == "block_emb" {
                assert!(largest(&want) > 1e-3 * model_largest, "{name} has too little gradient to test");
            }
            for (g, w) in got.iter().zip(want.iter()) {
                let (g, w) = (f64::from(*g), f64::from(*w));
                assert!((g - w).abs() <= RELATIVE * scale, "{name}: {g} vs {w} (scale {scale})");
            }
        }
    }

    #[test]
    fn at_lambda_zero_the_rules_change_nothing_the_device_computes() {
        let model = model();
        let (tokens, next) = batch();
        let ((.., cpu_grads), (loss, penalty, grads)) = both(&model, 0.0);
        let mut plain = DeviceModel::new(HostDevice::new(), &model, BATCH, SEQ_LEN).unwrap();
        let plain_loss = plain.loss_and_grads(&tokens, &next, None).unwrap();
        assert_eq!((loss, penalty), (plain_loss.cross_entropy, 0.0));
        assert_eq!(grads, plain.gradients().unwrap());
        // and nothing flows into the copy gates, as on the CPU
        assert!(cpu_grads.copy_gate_weight.iter().chain(grads.copy_gate_weight.iter()).all(|&g| g == 0.0));
    }

    #[test]
    fn the_device_form_lays_out_the_hook_s_sets_row_by_row() {
        let model = model();
        let set = rules();
        let (tokens, next) = batch();
        let at = RulesAt::new(&set, 0.6, model.config.n_layers, None, settings());
        let targets = at.targets(&model, &tokens, BATCH, SEQ_LEN);
        let hook = at.hook(&targets);
        let on_device = device_rules(&hook, None, &next, model.config.n_layers);
        let heads = model.config.n_heads;
        for (layer, rules) in on_device.layers.iter().enumerate() {
            let rules = rules.as_ref().unwrap();
            assert_eq!(rules.inv_tau, (1.0 / hook.temperature(layer)) as f32);
            for sequence in 0..BATCH {
                for head in 0..heads {
                    let sets = targets.at(layer, head, sequence).unwrap();
                    for i in 0..SEQ_LEN {
                        let row = (sequence * heads + head) * SEQ_LEN + i;
                        assert_eq!(rules.covered[row] == 1, sets.covered(i), "layer {layer} row {row}");
                        for j in 0..SEQ_LEN {
                            let want = j <= i && sets.contains(i, j);
                            assert_eq!(rules.targets[row * SEQ_LEN + j] == 1, want, "row {row} key {j}");
                        }
                    }
                }
            }
        }
        // layer 1 head 0 has the block-to-block rule too, so its sets differ from head 1's somewhere
        let layer1 = on_device.layers[1].as_ref().unwrap();
        let head_rows = |head: usize| (head * SEQ_LEN * SEQ_LEN)..((head + 1) * SEQ_LEN * SEQ_LEN);
        assert_ne!(layer1.targets[head_rows(0)], layer1.targets[head_rows(1)]);
        assert_eq!(on_device.blocks, vec![1, 2, 1, 2, 0, 1, 0, 2, 1, 1, 2, 0]);
    }
}
