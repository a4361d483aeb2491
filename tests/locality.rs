//! The locality dial end to end on the bundled corpus and its rules (METHOD §3–§6).

use ailla::data::generator::{bundled_corpus, DEFAULT_SEED};
use ailla::locality::metrics::{evaluate_at, DialEvaluation};
use ailla::locality::{DialSettings, LambdaSchedule, RuleSet, RulesSource};
use ailla::train::{self, CorpusSource, LocalityConfig, ModelShape, Progress, RunControl, TrainConfig};

fn dial_config() -> TrainConfig {
    TrainConfig {
        corpus: CorpusSource::Bundled { seed: DEFAULT_SEED },
        model: ModelShape { ctx_len: 64, d_model: 64, n_heads: 4, n_layers: 2, d_ff: 256, tied: true },
        steps: 300,
        eval_every: 0,
        checkpoint_every: 0,
        locality: Some(LocalityConfig {
            rules: RulesSource::Bundled,
            dial: DialSettings { margin: 12.0, temperature: 1.0, penalty: 0.5 },
            schedule: LambdaSchedule::Uniform { low: 0.0, high: 1.0 },
            progressive_beta: None,
            epsilon: 0.05,
            eval_lambdas: vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
            certificate_batches: 2,
            injections: Vec::new(),
        }),
        ..TrainConfig::default()
    }
}

#[test]
fn dial_training_gives_one_model_whose_attention_localises_as_lambda_rises() {
    let dir = tempfile::tempdir().unwrap();
    let summary = train::train(&dial_config(), dir.path(), &RunControl::default(), &Progress::Silent).unwrap();
    assert!(summary.rule_warnings.is_empty(), "{:?}", summary.rule_warnings);
    let dial = &summary.dial;
    assert_eq!(dial.len(), 6);
    for pair in dial.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(b.entropy_bits < a.entropy_bits, "entropy rose from λ {} to λ {}", a.lambda, b.lambda);
        assert!(b.pointer_fidelity > a.pointer_fidelity, "fidelity fell from λ {} to λ {}", a.lambda, b.lambda);
    }
    let last = dial.last().unwrap();
    assert!(last.pointer_fidelity > 0.95, "fidelity at λ = 1 is {}", last.pointer_fidelity);
    for row in dial {
        assert!(row.language_model.perplexity.is_finite() && row.language_model.perplexity > 1.0);
        assert!(row.covered_rows > 1000);
        assert_eq!(
            row.certificates.violations.total(),
            0,
            "bound violated at λ {}: {:?}",
            row.lambda,
            row.certificates.violations
        );
        assert!(row.certificates.group_sparsity.is_some());
        assert!(row.participation_ratio.iter().all(|p| *p >= 1.0 && *p <= 64.0));
    }
}

#[test]
fn lambda_zero_with_rules_reproduces_the_plain_evaluation_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = dial_config();
    config.steps = 20;
    config.locality.as_mut().unwrap().eval_lambdas = vec![];
    train::train(&config, dir.path(), &RunControl::default(), &Progress::Silent).unwrap();
    let ckpt = ailla::checkpoint::load(&dir.path().join("model.safetensors")).unwrap();
    let stored = ckpt.locality.as_ref().expect("the checkpoint records its rules");
    let (set, _) = RuleSet::compile(&stored.rules, &ckpt.vocabulary).unwrap();
    let ids = ckpt.vocabulary.encode(&bundled_corpus(DEFAULT_SEED).test[..20_000]);
    let evaluation = DialEvaluation {
        rules: &set,
        settings: stored.dial,
        progressive_beta: None,
        epsilon: 0.05,
        certificate_batches: 0,
        batch_size: 8,
    };
    let with_rules = evaluate_at(&ckpt.model, &ids, 0.0, &evaluation);
    let plain = ailla::locality::score::evaluate(&ckpt.model, &ids, 8, &ailla::locality::Conditions::Plain);
    assert_eq!(with_rules.language_model, plain);
}
