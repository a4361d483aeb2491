use super::*;
use crate::checkpoint::StoredLocality;
use crate::data::generator::{bundled_corpus, DEFAULT_SEED};
use crate::engine::model::{Config, Gelu};
use crate::locality::score::code_lengths;
use crate::locality::RulesSource;

/// A random model on the bundled corpus's vocabulary with the copy rules of `rules/copy-examples.rules`
/// (and the default rules it includes), its gates opened (`b = 0`) so that the copy shares are not
/// negligible, and a text of about 300 tokens: five windows of 64, the last one short.
fn fixture() -> (Checkpoint, Tokenized) {
    let corpus = bundled_corpus(DEFAULT_SEED);
    let vocabulary = Vocabulary::build(TokenizerKind::Word, &corpus.train, 10_000);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/copy-examples.rules");
    let spec = RulesSource::File(path).load().expect("the shipped copy rules compile");
    let (set, _) = RuleSet::compile(&spec, &vocabulary).expect("the shipped copy rules compile");
    let config = Config {
        vocab_size: vocabulary.len(),
        ctx_len: 64,
        d_model: 16,
        n_heads: 2,
        n_layers: 2,
        d_ff: 32,
        ln_eps: 1e-5,
        tied: true,
        gelu: Gelu::Tanh,
        recruited_blocks: Vec::new(),
        copy_paths: set.copy_rules.iter().map(|r| r.name.clone()).collect(),
    };
    let mut model = Model::init(config, 3).expect("a valid configuration");
    model.params.copy_gate_bias.fill(0.0);
    let text: String = corpus.test.lines().take(60).map(|l| format!("{l}\n")).collect();
    let tokenized = Tokenized::new(&vocabulary, &text);
    assert!(tokenized.ids.len() > 4 * 64 + 10, "{} tokens", tokenized.ids.len());
    let locality = StoredLocality { rules: spec, dial: DialSettings::default(), progressive_beta: None };
    (Checkpoint { model, vocabulary, step: 0, locality: Some(locality) }, tokenized)
}

fn at(prepared: &Prepared, ckpt: &Checkpoint, text: &Tokenized, position: usize, lambda: f64) -> Explanation {
    let request = Request { position, lambda, epsilon: 0.05 };
    explain(prepared, &ckpt.vocabulary, text, request, "test").expect("an explainable position")
}

#[test]
fn the_shares_add_up_to_the_probability_and_p_sums_to_one() {
    let (ckpt, text) = fixture();
    let prepared = Prepared::new(&ckpt, None).unwrap();
    let mut copied = 0;
    for position in (0..text.ids.len() - 1).step_by(7) {
        for lambda in [1.0, 0.0] {
            let e = at(&prepared, &ckpt, &text, position, lambda);
            let a = &e.actual;
            let shares = a.network.share + a.copy_paths.iter().map(|c| c.share).sum::<f64>();
            assert!((shares - a.probability).abs() <= 1e-6, "at {position}, λ {lambda}: {shares} ≠ {}", a.probability);
            assert!((e.probability_sum - 1.0).abs() <= 1e-6, "at {position}, λ {lambda}: Σp = {}", e.probability_sum);
            let weights = a.network.weight + a.copy_paths.iter().map(|c| c.weight).sum::<f64>();
            assert!((weights - 1.0).abs() <= 1e-9, "the mixture's weights sum to 1: {weights}");
            for c in &a.copy_paths {
                assert_eq!(!c.sources.is_empty(), c.cache_probability > 0.0, "{c:?}");
                assert!(c.sources.iter().all(|s| s.position <= position && s.token == a.token), "{c:?}");
            }
            if lambda == 0.0 {
                assert!(a.copy_paths.iter().all(|c| c.weight == 0.0 && c.share == 0.0), "{:?}", a.copy_paths);
                assert_eq!(a.network.weight, 1.0);
            } else if a.copy_paths.iter().any(|c| c.share > 0.0) {
                copied += 1;
            }
        }
    }
    assert!(copied >= 3, "too few positions where a copy path held the next token: {copied}");
}

/// The explanation is of the real prediction: its `p(y)` is what the evaluation scores at the same
/// position, at several λ, in the first, a middle and the short last window. The evaluation's
/// softmax runs in `f32` and the explanation's in `f64` from the same logits, hence a relative
/// tolerance of 1e-5 rather than equality.
#[test]
fn the_explained_probability_is_the_one_the_evaluation_scores() {
    let (ckpt, text) = fixture();
    let prepared = Prepared::new(&ckpt, None).unwrap();
    let positions = [0, 5, 63, 64, 130, text.ids.len() - 3, text.ids.len() - 2];
    for lambda in [0.0, 0.5, 1.0] {
        let rules = RulesAt::new(&prepared.rules, lambda, 2, None, prepared.dial).without_penalty();
        let bits = code_lengths(&prepared.model, &text.ids, 4, &Conditions::Rules(rules));
        for &position in &positions {
            let e = at(&prepared, &ckpt, &text, position, lambda);
            let scored = (-bits[position] * std::f64::consts::LN_2).exp();
            let gap = (e.actual.probability - scored).abs() / scored;
            assert!(gap < 1e-5, "at {position}, λ {lambda}: explained {} vs scored {scored}", e.actual.probability);
            assert!((e.actual.bits - bits[position]).abs() < 1e-4);
        }
    }
}

#[test]
fn covered_rows_name_their_rules_and_certificates_hold_as_bounds() {
    let (ckpt, text) = fixture();
    let prepared = Prepared::new(&ckpt, None).unwrap();
    let mut covered = 0;
    for position in 0..text.ids.len() - 1 {
        let e = at(&prepared, &ckpt, &text, position, 1.0);
        assert_eq!(e.attention.len(), 4);
        for row in &e.attention {
            let mass: f64 = row.attended.iter().map(|a| a.weight).sum();
            assert!(mass <= 1.0 + 1e-5 && row.attended.len() == (position - e.window_start + 1).min(TOP_ATTENDED));
            let Some(c) = &row.coverage else { continue };
            covered += 1;
            assert!(c.bounds_hold, "at {position}: {c:?}");
            assert!(!c.rules.is_empty() && c.rules.iter().all(|r| r.text.is_some()), "{c:?}");
            assert_eq!(c.certified, c.fidelity >= 0.95);
            // a margin of 12 nats at λ = 1 leaves a random model's covered rows on their targets
            assert!(c.fidelity > 0.9, "at {position}: {c:?}");
        }
    }
    assert!(covered > 20, "{covered} covered rows");
}

#[test]
fn out_of_range_positions_and_dial_values_are_errors_naming_the_limits() {
    let (ckpt, text) = fixture();
    let prepared = Prepared::new(&ckpt, None).unwrap();
    let n = text.ids.len();
    let error = |position, lambda| {
        explain(&prepared, &ckpt.vocabulary, &text, Request { position, lambda, epsilon: 0.05 }, "t")
            .unwrap_err()
            .to_string()
    };
    let message = error(n - 1, 1.0);
    assert!(message.contains(&format!("{n} tokens")) && message.contains(&format!("at most {}", n - 2)), "{message}");
    assert!(error(0, 1.5).contains("outside [0, 1]"));
    assert!(error(0, f64::NAN).contains("outside [0, 1]"));
}

#[test]
fn unknown_words_are_read_as_unk_and_reported() {
    let (ckpt, _) = fixture();
    let text = Tokenized::new(&ckpt.vocabulary, "patient zyxwv chen\n");
    assert_eq!(text.unknown, vec![UnknownPiece { position: 1, text: "zyxwv".into() }]);
    assert_eq!(text.ids[1], ckpt.vocabulary.id(UNK).unwrap());
    assert_eq!(text.ids, ckpt.vocabulary.encode("patient zyxwv chen\n"));
}
