//! Block recruitment (METHOD §7) on the bundled generator with a planted block that no rules name.

use std::path::{Path, PathBuf};

use ailla::checkpoint;
use ailla::config::SplitScoring;
use ailla::data::generator::{planted_corpus, DEFAULT_SEED, PLANTED_ALLERGENS};
use ailla::data::Vocabulary;
use ailla::engine::optim::AdamW;
use ailla::locality::{DialSettings, LambdaSchedule, RuleSet, RulesSource};
use ailla::recruit::{self, Candidate, CheckContext, Origin, RecruitmentConfig};
use ailla::train::{self, CorpusSource, LocalityConfig, ModelShape, Progress, RunControl, TrainConfig};

/// `dir/corpus`, holding the planted corpus's three splits.
fn planted_corpus_in(dir: &Path) -> PathBuf {
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let splits = planted_corpus(DEFAULT_SEED);
    for (name, text) in [("train.txt", &splits.train), ("valid.txt", &splits.valid), ("test.txt", &splits.test)] {
        std::fs::write(corpus.join(name), text).unwrap();
    }
    corpus
}

fn config(corpus: &Path, steps: usize, recruitment: Option<RecruitmentConfig>) -> TrainConfig {
    TrainConfig {
        corpus: CorpusSource::Directory(corpus.to_path_buf()),
        model: ModelShape { ctx_len: 64, d_model: 48, n_heads: 4, n_layers: 2, d_ff: 192, tied: true },
        steps,
        eval_every: 0,
        checkpoint_every: 0,
        final_eval_tokens: Some(2048),
        locality: Some(LocalityConfig {
            rules: RulesSource::Bundled,
            dial: DialSettings { margin: 12.0, temperature: 1.0, penalty: 0.5 },
            schedule: LambdaSchedule::Constant { lambda: 0.5 },
            progressive_beta: None,
            epsilon: 0.05,
            eval_lambdas: vec![0.0, 1.0],
            certificate_batches: 0,
            injections: Vec::new(),
        }),
        recruitment,
        ..TrainConfig::default()
    }
}

/// The co-trained design (a control and a reversed control beside each candidate), which the tests
/// written for it keep exercising; frozen-model trials have tests of their own below.
fn recruitment(margin_bits: f64) -> RecruitmentConfig {
    RecruitmentConfig {
        candidates_per_check: 4,
        trial: recruit::TrialKind::CoTrained,
        ..RecruitmentConfig::new(100, 20, margin_bits, 2)
    }
}

/// Frozen-model trials (METHOD §7) as `pipelines/recruit_planted.yaml` sets them.
fn frozen_recruitment(margin_bits: f64) -> RecruitmentConfig {
    RecruitmentConfig {
        trial_batches: Some(8),
        split_tokens: 12_000,
        copy_within: Some(16),
        cluster_size: 16,
        ..RecruitmentConfig::new(50, 400, margin_bits, 1)
    }
}

fn ids_of(vocabulary: &Vocabulary, words: &[&str]) -> Vec<u32> {
    let mut ids: Vec<u32> =
        words.iter().map(|w| vocabulary.tokens.iter().position(|t| t == w).expect("a planted word") as u32).collect();
    ids.sort_unstable();
    ids
}

#[test]
fn frozen_trials_admit_the_planted_block_and_reject_blocks_that_do_not_repeat() {
    let (_dir, t) = trained(50);
    let setup = CheckSetup::new(&t);
    let recruitment = frozen_recruitment(16.0);
    let context = CheckSetup::context(&setup, &t, &recruitment);
    let planted = ids_of(&t.vocabulary, PLANTED_ALLERGENS);
    // 16 general tokens drawn at random, and the 16 most frequent general tokens that do not come back
    // within the window (ρ < 1: they are everywhere, but not twice in a row)
    let free: Vec<u32> = (2..t.vocabulary.len() as u32)
        .filter(|&id| setup.set.block_of_token(id) == 0 && !planted.contains(&id))
        .collect();
    let mut rng = ailla::rng::Rng::new(7);
    let mut random: Vec<u32> = (0..16).map(|_| free[rng.below(free.len())]).collect();
    random.sort_unstable();
    random.dedup();
    let (rho, count) = recruit::recurrent::recurrence(&t.train_ids, t.vocabulary.len(), 16);
    let mut frequent: Vec<u32> = free.iter().copied().filter(|&id| rho[id as usize] < 1.0).collect();
    frequent.sort_by_key(|&id| std::cmp::Reverse(count[id as usize]));
    frequent.truncate(16);
    frequent.sort_unstable();
    let candidate = |name: &str, members: Vec<u32>| Candidate { name: name.into(), origin: Origin::Given, members };
    let candidates =
        [candidate("planted", planted.clone()), candidate("random", random), candidate("frequent", frequent)];
    let before = t.model.clone();
    let outcome = recruit::copy_check::check(&context, &t.model, &candidates).unwrap();
    assert_eq!(t.model, before, "a check changed the model");
    let [planted_d, random_d, frequent_d] = &outcome.decisions[..] else { panic!("{:#?}", outcome.decisions) };
    assert!(planted_d.accepted, "{planted_d:#?}");
    assert!(
        planted_d.saving_bits() >= 1.5 * planted_d.cost_bits,
        "the planted block saved {:.1} bits against a cost of {:.1}",
        planted_d.saving_bits(),
        planted_d.cost_bits
    );
    // where it saves: at the positions whose cache held the target
    assert!(planted_d.saved_where_copied_bits.unwrap() > planted_d.saving_bits());
    for rejected in [random_d, frequent_d] {
        assert!(!rejected.accepted && rejected.saving_bits() < rejected.cost_bits, "{rejected:#?}");
    }
    let (accepted, name, _) = outcome.accepted.expect("one block accepted");
    assert_eq!(accepted.members, planted);
    assert!(name.starts_with("recruited_"), "{name}");

    // scoring the saving alone runs the output layer only where a cache holds the target, and decides
    // the same: each saving is the same sum of the same terms up to f64 summation order and the f32
    // rounding of a smaller product's blocking (relative 1e-4 of the split's code length per saving)
    let saving_only = RecruitmentConfig { split_scoring: SplitScoring::SavingOnly, ..recruitment.clone() };
    let sparse = recruit::copy_check::check(
        &recruit::CheckContext { recruitment: &saving_only, ..context },
        &t.model,
        &candidates,
    )
    .unwrap();
    let total = outcome.decisions[0].bits_before.unwrap();
    for (full, alone) in outcome.decisions.iter().zip(&sparse.decisions) {
        assert_eq!((alone.bits_before, alone.bits_after, alone.description_length_before), (None, None, None));
        assert_eq!((alone.accepted, alone.copied_positions), (full.accepted, full.copied_positions), "{alone:#?}");
        assert!(
            (alone.saving_bits() - full.saving_bits()).abs() < 1e-4 * total,
            "{}: {} bits scored alone against {} at every position",
            full.candidate,
            alone.saving_bits(),
            full.saving_bits()
        );
        assert!((alone.description_length_change() - full.description_length_change()).abs() < 1e-4 * total);
    }
    assert_eq!(sparse.accepted.map(|(c, ..)| c.members), Some(planted));
}

#[test]
fn recurrent_tokens_propose_the_planted_allergens() {
    let (_dir, t) = trained(50);
    let setup = CheckSetup::new(&t);
    let recruitment = frozen_recruitment(16.0);
    let context = CheckSetup::context(&setup, &t, &recruitment);
    let planted = ids_of(&t.vocabulary, PLANTED_ALLERGENS);
    let proposed = recruit::copy_check::propose(&context, &t.model);
    let overlap = |members: &[u32]| members.iter().filter(|m| planted.contains(m)).count();
    let best = proposed
        .iter()
        .filter(|c| c.origin == Origin::Recurrent)
        .max_by_key(|c| overlap(&c.members) * 1000 / c.members.len().max(1))
        .expect("recurrent-token candidates");
    let hits = overlap(&best.members) as f64;
    assert!(
        hits / planted.len() as f64 >= 0.8 && hits / best.members.len() as f64 >= 0.8,
        "{}: {:?}",
        best.name,
        best.members
    );
}

#[test]
fn a_run_whose_frozen_trials_are_all_rejected_is_bit_identical_to_a_run_without_recruitment() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = planted_corpus_in(dir.path());
    let with = config(&corpus, 120, Some(frozen_recruitment(1e9)));
    let without = config(&corpus, 120, None);
    let (a, b) = (dir.path().join("with"), dir.path().join("without"));
    train::train(&with, &a, &RunControl::default(), &Progress::Silent).unwrap();
    train::train(&without, &b, &RunControl::default(), &Progress::Silent).unwrap();
    let metrics = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"kind\":\"recruitment\"") && !metrics.contains("\"accepted\":true"));
    assert_eq!(
        std::fs::read(a.join("model.safetensors")).unwrap(),
        std::fs::read(b.join("model.safetensors")).unwrap(),
        "rejected frozen trials changed the weights"
    );
}

/// CI's quick variant of the planted pipeline: it admits the allergens, the run goes on with their
/// copy path, and `recruited.rules` is a rules file `ailla check` accepts.
#[test]
fn the_quick_planted_pipeline_admits_the_allergens_with_a_copy_path() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let pipeline = std::fs::read_to_string(root.join("pipelines/recruit_planted.yaml")).unwrap();
    let rules = root.join("rules/default.rules");
    let path = dir.path().join("planted.yaml");
    std::fs::write(&path, pipeline.replace("../rules/default.rules", rules.to_str().unwrap())).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ailla"))
        .args(["--threads", "2", "run", path.to_str().unwrap(), "--quick"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let member = dir.path().join("runs/recruit_planted-quick/seed-1");
    let metrics = std::fs::read_to_string(member.join("metrics.jsonl")).unwrap();
    let accepted: Vec<serde_json::Value> = metrics
        .lines()
        .filter(|l| l.contains("\"kind\":\"recruitment\""))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|d| d["accepted"] == true)
        .collect();
    assert_eq!(accepted.len(), 1, "{metrics}");
    let members: Vec<&str> = accepted[0]["members"].as_array().unwrap().iter().filter_map(|m| m.as_str()).collect();
    let hits = members.iter().filter(|m| PLANTED_ALLERGENS.contains(m)).count();
    assert!(hits * 5 >= PLANTED_ALLERGENS.len() * 4 && hits * 5 >= members.len() * 4, "{members:?}");
    let saving = accepted[0]["bits_before"].as_f64().unwrap() - accepted[0]["bits_after"].as_f64().unwrap();
    assert!(saving >= 1.5 * accepted[0]["cost_bits"].as_f64().unwrap(), "{}", accepted[0]);
    // the admitted path acts from then on: the final evaluation at λ = 1 reports it
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(member.join("summary.json")).unwrap()).unwrap();
    let at_one = summary["dial"].as_array().unwrap().iter().find(|d| d["lambda"] == 1.0).unwrap();
    assert!(at_one["copy_paths"][0]["bits_saved"].as_f64().unwrap() > 0.0, "{}", at_one["copy_paths"]);
    let snippet = member.join("recruited.rules");
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_ailla"))
        .args(["check", snippet.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let report = std::fs::read_to_string(dir.path().join("runs/recruit_planted-quick/report.md")).unwrap();
    assert!(report.contains("**accepted**") && report.contains("frozen"), "section 6 lacks the decision");
}

/// Trains on the planted corpus and returns what a recruitment check needs.
struct Trained {
    config: TrainConfig,
    model: ailla::engine::Model<f32>,
    optimizer: AdamW<f32>,
    vocabulary: Vocabulary,
    train_ids: Vec<u32>,
    valid_ids: Vec<u32>,
}

fn trained(steps: usize) -> (tempfile::TempDir, Trained) {
    let dir = tempfile::tempdir().unwrap();
    let corpus = planted_corpus_in(dir.path());
    let config = config(&corpus, steps, None);
    let run = dir.path().join("run");
    train::train(&config, &run, &RunControl::default(), &Progress::Silent).unwrap();
    let loaded = checkpoint::load(&run.join("model.safetensors")).unwrap();
    let optimizer =
        checkpoint::load_optimizer(&checkpoint::optimizer_path(&run.join("model.safetensors")), &loaded.model.params)
            .unwrap();
    let splits = config.corpus.load().unwrap();
    let train_ids = loaded.vocabulary.encode(&splits.train);
    let valid_ids = loaded.vocabulary.encode(&splits.valid);
    let trained =
        Trained { config, model: loaded.model, optimizer, vocabulary: loaded.vocabulary, train_ids, valid_ids };
    (dir, trained)
}

/// The run's rules, and its schedule stretched past the check so that trials have steps to train.
struct CheckSetup {
    config: TrainConfig,
    locality: LocalityConfig,
    spec: ailla::locality::RuleSpec,
    set: RuleSet,
}

impl CheckSetup {
    fn new(t: &Trained) -> Self {
        let locality = t.config.locality.clone().unwrap();
        let spec = locality.load_rules().unwrap();
        let (set, _) = RuleSet::compile(&spec, &t.vocabulary).unwrap();
        CheckSetup { config: TrainConfig { steps: 400, ..t.config.clone() }, locality, spec, set }
    }

    /// A check at step 200, the run's last.
    fn context<'a>(&'a self, t: &'a Trained, recruitment: &'a RecruitmentConfig) -> CheckContext<'a> {
        CheckContext {
            config: &self.config,
            recruitment,
            locality: &self.locality,
            spec: &self.spec,
            set: &self.set,
            vocabulary: &t.vocabulary,
            train_ids: &t.train_ids,
            split: recruit::split_of(&t.valid_ids, recruitment.split_tokens),
            step: 200,
        }
    }
}

#[test]
fn clustering_proposes_the_planted_block_and_a_random_block_is_rejected_in_bits() {
    let (_dir, t) = trained(200);
    let recruitment = recruitment(0.0);
    let setup = CheckSetup::new(&t);
    let set = &setup.set;
    let context = setup.context(&t, &recruitment);
    let planted: Vec<u32> = PLANTED_ALLERGENS.iter().filter_map(|a| t.vocabulary.id(a)).collect();
    assert_eq!(planted.len(), PLANTED_ALLERGENS.len());
    let proposed = recruit::propose(&context, &t.model);
    let best = proposed
        .iter()
        .filter(|c| c.origin == Origin::Cluster)
        .map(|c| {
            let shared = c.members.iter().filter(|m| planted.contains(m)).count() as f64;
            (shared / planted.len() as f64).min(shared / c.members.len() as f64)
        })
        .fold(0.0, f64::max);
    assert!(best >= 0.8, "no proposed cluster overlaps the planted allergens by 80 % both ways: {proposed:?}");

    // a block of frequent tokens drawn at random, the kind of candidate recruitment must turn down
    let mut rng = ailla::rng::Rng::new(5);
    let pool: Vec<u32> = (2..120).filter(|&t| set.block_of_token(t) == 0 && !planted.contains(&t)).collect();
    let mut random: Vec<u32> = (0..8).map(|_| *rng.choose(&pool)).collect();
    random.sort_unstable();
    random.dedup();
    let given = Candidate { name: "random".into(), origin: Origin::Given, members: random };
    let outcome = recruit::check(&context, &t.model, &t.optimizer, std::slice::from_ref(&given)).unwrap();
    let verdict = outcome.decisions.iter().find(|d| d.candidate == "random").expect("the random block was trialled");
    assert!(!verdict.accepted, "a random block was accepted: {verdict:?}");
    assert!(verdict.saving_bits() < verdict.cost_bits + verdict.margin_bits);
    // every decision is written in bits, and the description length never rises because of one
    for d in &outcome.decisions {
        assert!(
            d.bits_before.is_some_and(f64::is_finite) && d.bits_after.is_some_and(f64::is_finite) && d.cost_bits > 0.0
        );
        assert!(d.description_length_after <= d.description_length_before);
        assert!(d.noise_bits.is_finite() && d.noise_bits >= 0.0);
    }
    assert_eq!(outcome.trials, outcome.decisions.len() + 2, "control, reversed control, candidates");

    // the reversed control trains on the very batches of the control: over one step it is the control,
    // over several it takes another path to a different code length
    let one_step = RecruitmentConfig { trial_steps: 1, ..recruitment.clone() };
    let context = CheckContext { recruitment: &one_step, ..context };
    let (control, reversed) = (
        recruit::trial(&context, &t.model, &t.optimizer, None).unwrap(),
        recruit::reversed_control(&context, &t.model, &t.optimizer).unwrap(),
    );
    assert_eq!(control.model, reversed.model);
    assert_eq!(control.bits, reversed.bits);
    let context = CheckContext { recruitment: &recruitment, ..context };
    let (control, reversed) = (
        recruit::trial(&context, &t.model, &t.optimizer, None).unwrap(),
        recruit::reversed_control(&context, &t.model, &t.optimizer).unwrap(),
    );
    assert_ne!(control.bits, reversed.bits);
    let batches = |trial: &recruit::Trial| trial.steps.iter().map(|s| s.loss.to_bits()).collect::<Vec<_>>();
    assert_eq!(control.steps.len(), reversed.steps.len());
    assert_ne!(batches(&control), batches(&reversed), "the reversed control saw its batches in another order");
}

#[test]
fn a_run_whose_trials_are_all_rejected_is_bit_identical_to_a_run_without_recruitment() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = planted_corpus_in(dir.path());
    // no block can save a billion bits on 4096 tokens: every trial is rejected
    let with = config(&corpus, 220, Some(recruitment(1e9)));
    let without = config(&corpus, 220, None);
    let (a, b) = (dir.path().join("with"), dir.path().join("without"));
    train::train(&with, &a, &RunControl::default(), &Progress::Silent).unwrap();
    train::train(&without, &b, &RunControl::default(), &Progress::Silent).unwrap();
    let metrics = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
    let trials = metrics.lines().filter(|l| l.contains("\"kind\":\"recruitment\"")).count();
    assert!(trials >= 2, "the recruitment check at step 200 did not run");
    assert!(!metrics.contains("\"accepted\":true"));
    let (ma, mb) = (
        checkpoint::load(&a.join("model.safetensors")).unwrap(),
        checkpoint::load(&b.join("model.safetensors")).unwrap(),
    );
    assert_eq!(ma.model, mb.model, "rejected trials changed the weights");
    assert!(!a.join("recruited.rules").exists());
}

#[test]
fn ailla_trial_weighs_an_experts_block_in_bits_without_touching_the_run() {
    let (dir, t) = trained(200);
    let run = dir.path().join("run");
    let ailla = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ailla")).args(args).output().expect("the ailla binary runs")
    };
    let weights_before = std::fs::read(run.join("model.safetensors")).unwrap();
    let block = PLANTED_ALLERGENS.join(", ");
    let args = [
        "--threads",
        "2",
        "trial",
        run.to_str().unwrap(),
        "--block",
        &block,
        "--steps",
        "20",
        "--trial",
        "co-trained",
        "--json",
    ];
    let output = ailla(&args);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let probe: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(probe["blocks"].as_array().unwrap().len(), 1);
    let verdict = &probe["blocks"][0];
    let decision = &verdict["decision"];
    let number = |v: &serde_json::Value| v.as_f64().unwrap();
    assert_eq!(decision["members"].as_array().unwrap().len(), PLANTED_ALLERGENS.len());
    assert_eq!(probe["from_step"], 200);
    assert_eq!(probe["trial_steps"], 20);
    // the split's bits are the sum of its member-query and other positions, under both models
    let split = decision["split_tokens"].as_u64().unwrap() as usize;
    let (members, others) = (&verdict["member_queries"], &verdict["other_queries"]);
    assert_eq!(members["positions"].as_u64().unwrap() + others["positions"].as_u64().unwrap(), split as u64);
    assert!(members["positions"].as_u64().unwrap() > 100, "the planted allergens are inputs in the split");
    for (side, total) in [("bits_control", "bits_before"), ("bits_with_block", "bits_after")] {
        let sum = number(&members[side]) + number(&others[side]);
        assert!((sum - number(&decision[total])).abs() < 1e-6 * sum, "{side}: {sum} vs {}", decision[total]);
    }
    let cost = recruit::block_cost_bits(t.vocabulary.len(), PLANTED_ALLERGENS.len(), 48, split, None);
    assert!((number(&decision["cost_bits"]) - cost).abs() < 1e-9);
    assert!((number(&verdict["membership_bits"]) - recruit::log2_binomial(t.vocabulary.len(), 16)).abs() < 1e-9);
    let saving = number(&decision["bits_before"]) - number(&decision["bits_after"]);
    let required = cost + number(&decision["margin_bits"]) + number(&decision["noise_bits"]);
    assert!(number(&decision["noise_bits"]) > 0.0, "the noise floor is measured");
    assert_eq!(decision["accepted"].as_bool().unwrap(), saving > required);
    // the same question gets the same answer, and the run is left as it was
    assert_eq!(ailla(&args).stdout, output.stdout);
    assert_eq!(std::fs::read(run.join("model.safetensors")).unwrap(), weights_before);

    assert_eq!((probe["rule_layer"].as_u64(), probe["rule_head"].as_u64()), (Some(1), Some(0)));

    let text = ailla(&["trial", run.to_str().unwrap(), "--block", &block, "--steps", "5", "--trial", "co-trained"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("a member is the input") && text.contains("verdict: "), "{text}");
    assert!(text.contains("own-block rule acts on layer 1, head 0, within 32 positions"), "{text}");
    // another head: the same controls, another copy with the block
    let on_head = |head: &str| {
        let output = ailla(&[
            "trial",
            run.to_str().unwrap(),
            "--block",
            &block,
            "--steps",
            "5",
            "--head",
            head,
            "--trial",
            "co-trained",
            "--json",
        ]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
    };
    let (head_0, head_2) = (on_head("0"), on_head("2"));
    assert_eq!(head_2["rule_head"], 2);
    let decision = |probe: &serde_json::Value, field: &str| probe["blocks"][0]["decision"][field].clone();
    assert_eq!(decision(&head_0, "bits_before"), decision(&head_2, "bits_before"));
    assert_ne!(decision(&head_0, "bits_after"), decision(&head_2, "bits_after"));
    for (flag, value, says) in [("--head", "4", "4 heads per layer"), ("--layer", "2", "2 layers")] {
        let refused = ailla(&["trial", run.to_str().unwrap(), "--block", "latex", flag, value]);
        assert_eq!(refused.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains(&format!("`{flag}`")) && stderr.contains(says), "{stderr}");
    }

    for (words, says) in [("latex, peanutz", "`peanutz` is not in the run's vocabulary"), ("latex, insulin", "`drugs`")]
    {
        let refused = ailla(&["trial", run.to_str().unwrap(), "--block", words]);
        assert_eq!(refused.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains(says) && stderr.contains("--block"), "{stderr}");
    }
    // a rules file's blocks, patterns included, are trialled against one pair of controls
    let rules = dir.path().join("candidates.rules");
    let allergens: Vec<&str> = PLANTED_ALLERGENS.iter().take(8).copied().collect();
    std::fs::write(&rules, format!("block allergens: {}\n\nblock ids: pattern \"[0-9]+\"\n", allergens.join(", ")))
        .unwrap();
    let output = ailla(&["trial", run.to_str().unwrap(), "--rules", rules.to_str().unwrap(), "--steps", "5", "--json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let probe: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let blocks = probe["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[0]["decision"]["candidate"], "allergens");
    assert_eq!(blocks[0]["decision"]["members"].as_array().unwrap().len(), 8);
    assert!(blocks[1]["decision"]["members"].as_array().unwrap().len() > 100, "the pattern matched the ids");
    assert_eq!(blocks[0]["decision"]["bits_before"], blocks[1]["decision"]["bits_before"]);
    let only = ailla(&["trial", run.to_str().unwrap(), "--rules", rules.to_str().unwrap(), "--name", "ids"]);
    let only = String::from_utf8_lossy(&only.stdout);
    assert!(only.contains("block `ids`") && !only.contains("block `allergens`"), "{only}");
    std::fs::write(&rules, "block allergens: latex,\n").unwrap();
    let refused = ailla(&["trial", run.to_str().unwrap(), "--rules", rules.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    // the trailing comma itself is blamed, not the start of the next line
    assert!(!refused.status.success() && stderr.contains("candidates.rules:1:23"), "{stderr}");
    assert!(stderr.contains("nothing follows this comma"), "{stderr}");

    let refused = ailla(&["trial", run.to_str().unwrap(), "--block", "latex", "--steps", "0"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("`--steps`"));
    // a run started elsewhere names its corpus relative to there: the error says so
    let mut recorded: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("train.json")).unwrap()).unwrap();
    recorded["corpus"] = serde_json::json!({ "directory": "elsewhere/corpus" });
    std::fs::write(run.join("train.json"), recorded.to_string()).unwrap();
    let refused = ailla(&["trial", run.to_str().unwrap(), "--block", "latex"]);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("train.json") && stderr.contains("`elsewhere/corpus` relative to"), "{stderr}");
}

/// What acceptance does. No block on this corpus pays for itself at this scale (docs/recruitment.md),
/// so the trials here are real but their code lengths are then set: the planted block saves 100 bits
/// more than it must, a random block one bit less. Checked: the verdicts, the name, the rules the run
/// goes on with, the description length and the `.rules` snippet an expert would pin.
#[test]
fn an_accepted_block_is_named_joins_the_rules_and_lowers_the_description_length() {
    let (_dir, t) = trained(200);
    let recruitment = RecruitmentConfig { rule_head: 2, ..recruitment(4.0) };
    let setup = CheckSetup::new(&t);
    let set = &setup.set;
    let context = setup.context(&t, &recruitment);
    let planted: Vec<u32> = {
        let mut ids: Vec<u32> = PLANTED_ALLERGENS.iter().filter_map(|a| t.vocabulary.id(a)).collect();
        ids.sort_unstable();
        ids
    };
    let random: Vec<u32> = (40..48).filter(|&id| set.block_of_token(id) == 0 && !planted.contains(&id)).collect();
    let candidates = [
        Candidate { name: "given".into(), origin: Origin::Given, members: planted.clone() },
        Candidate { name: "random".into(), origin: Origin::Given, members: random.clone() },
    ];
    let cost = |members: usize| recruit::block_cost_bits(t.vocabulary.len(), members, 48, 4096, None);
    // `extra[i]` bits beyond what candidate i must save
    let verdicts = |extra: [f64; 2]| {
        let mut trialled = recruit::trial_all(&context, &t.model, &t.optimizer, &candidates).unwrap();
        let must = |members: usize| cost(members) + recruitment.margin_bits + trialled.noise_bits;
        let control = trialled.control.bits;
        for ((candidate, trial), extra) in candidates.iter().zip(&mut trialled.candidates).zip(extra) {
            trial.as_mut().unwrap().bits = control - must(candidate.members.len()) - extra;
        }
        recruit::decide(&context, &t.model, &candidates, trialled).unwrap()
    };

    let outcome = verdicts([100.0, -1.0]);
    let [given, random_verdict] = &outcome.decisions[..] else { panic!("two verdicts: {:?}", outcome.decisions) };
    assert!(given.accepted && !random_verdict.accepted);
    assert_eq!(random_verdict.description_length_after, random_verdict.description_length_before);
    // named from its anchors, and the description length falls by what it saves beyond its cost
    assert!(given.candidate.starts_with("recruited_"), "{}", given.candidate);
    let fall = given.description_length_before.unwrap() - given.description_length_after.unwrap();
    assert!(fall > recruitment.margin_bits);
    assert!((fall - (given.saving_bits() - given.cost_bits)).abs() < 1e-6);
    let (trial, spec) = outcome.accepted.expect("the block that pays is accepted");
    let recruited = trial.model.config.recruited_blocks.last().unwrap();
    assert_eq!((recruited.name.as_str(), &recruited.members), (given.candidate.as_str(), &planted));
    assert!(t.model.config.recruited_blocks.is_empty(), "the run's own model is not touched by a verdict");
    // the rules the run goes on with: the block, and its own-block rule on the head the priors name
    let block = spec.blocks.iter().find(|b| b.name == given.candidate).expect("the block joins the rules");
    assert_eq!(block.words.len(), planted.len());
    let rule = spec.rules.last().unwrap();
    assert_eq!(
        (rule.layers.as_deref(), rule.heads.as_deref(), rule.within),
        (Some(&[1][..]), Some(&[2][..]), Some(32))
    );
    let (with_block, _) = RuleSet::compile(&spec, &t.vocabulary).unwrap();
    assert!(planted.iter().all(|&id| with_block.block_of_token(id) != 0));
    // the snippet for the expert reads back as the same block, with the bits behind it
    let snippet = recruit::rules_snippet(&trial.model, &t.vocabulary, &outcome.decisions);
    assert!(snippet.contains(&format!("saved {:.1} bits", given.saving_bits())), "{snippet}");
    let loaded = ailla::dsl::load_source(Path::new("recruited.rules"), snippet).unwrap();
    let compiled = ailla::dsl::compile(&loaded, Some(&t.vocabulary));
    assert!(compiled.diagnostics.is_empty(), "the snippet does not compile: {:?}", compiled.diagnostics);
    let pinned = compiled.spec.blocks.iter().find(|b| b.name == given.candidate).unwrap();
    let mut words = pinned.words.clone();
    words.sort();
    let mut expected: Vec<String> = PLANTED_ALLERGENS.iter().map(|w| w.to_string()).collect();
    expected.sort();
    assert_eq!(words, expected);

    // of two blocks that pay, the one that saves most beyond its cost is taken
    let outcome = verdicts([10.0, 50.0]);
    assert!(outcome.decisions.iter().all(|d| d.pays()));
    let taken: Vec<&str> = outcome.decisions.iter().filter(|d| d.accepted).map(|d| d.candidate.as_str()).collect();
    assert_eq!(taken.len(), 1);
    let (trial, _) = outcome.accepted.unwrap();
    assert_eq!(trial.model.config.recruited_blocks.last().unwrap().members, random);
}

/// `ailla trial --head` places the blocks it trials; a block the run recruited earlier keeps its head.
#[test]
fn ailla_trial_moves_only_the_trialled_blocks_rule() {
    let (dir, t) = trained(200);
    let run = dir.path().join("run");
    let weights = run.join("model.safetensors");
    let loaded = checkpoint::load(&weights).unwrap();
    let mut model = loaded.model;
    let mut optimizer = t.optimizer.clone();
    let latex = t.vocabulary.id("latex").unwrap();
    let pollen = t.vocabulary.id("pollen").unwrap();
    model.add_block("recruited_latex", &[latex, pollen]).unwrap();
    optimizer.grow_to(&model.params);
    let with_block = checkpoint::Checkpoint { model, ..loaded };
    checkpoint::save(&weights, &with_block).unwrap();
    checkpoint::save_optimizer(&checkpoint::optimizer_path(&weights), &optimizer, &with_block.model.params).unwrap();
    let control_bits = |head: &str| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_ailla"))
            .args(["trial", run.to_str().unwrap(), "--block", "peanuts, soy", "--steps", "2", "--head", head])
            .args(["--trial", "co-trained", "--json"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let probe: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(probe["rule_head"], head.parse::<u64>().unwrap());
        probe["blocks"][0]["decision"]["bits_before"].as_f64().unwrap()
    };
    // the control has the recruited block and no new one: the same code length whichever head is asked
    assert_eq!(control_bits("0"), control_bits("3"));
}

/// What a run does after it accepts a block, end to end. No block on this corpus pays for itself at
/// this scale (docs/recruitment.md), so this run makes acceptance cheap on purpose: six two-word
/// `recruitable` blocks (about 19 bits of membership each), block embeddings at a thousandth of a bit a
/// number, no margin and no noise floor. Training noise alone then admits one of them at the first
/// check (it did for seeds 1–5). What is checked is what acceptance does, not whether the block
/// deserved it.
#[test]
fn a_run_goes_on_with_the_block_it_accepts_and_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = planted_corpus_in(dir.path());
    let rules = dir.path().join("pairs.rules");
    let default_rules =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/default.rules")).unwrap();
    let pairs = [
        ("give", "every"),
        ("hours", "dose"),
        ("signed", "for"),
        ("sample", "blood"),
        ("reason", "accepted"),
        ("result", "test"),
    ];
    let recruitable: String = pairs
        .iter()
        .enumerate()
        .map(|(i, (a, b))| format!("recruitable block pair_{i} seeded by {a}, {b}\n"))
        .collect();
    std::fs::write(&rules, format!("{default_rules}\n{recruitable}")).unwrap();
    let recruitment = RecruitmentConfig {
        candidates_per_check: 1,
        cluster_size: 2,
        split_tokens: 8192,
        bits_per_parameter: Some(0.001),
        noise_control: false,
        trial: recruit::TrialKind::CoTrained,
        ..RecruitmentConfig::new(150, 100, 0.0, 2)
    };
    let mut config = config(&corpus, 450, Some(recruitment));
    if let Some(locality) = config.locality.as_mut() {
        locality.rules = RulesSource::File(rules.clone());
    }
    let straight = dir.path().join("straight");
    train::train(&config, &straight, &RunControl::default(), &Progress::Silent).unwrap();

    let records: Vec<serde_json::Value> = std::fs::read_to_string(straight.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let accepted: Vec<&serde_json::Value> =
        records.iter().filter(|r| r["kind"] == "recruitment" && r["accepted"] == true).collect();
    assert!(!accepted.is_empty(), "no block was accepted; this test relies on training noise: {records:?}");
    for decision in &accepted {
        let (before, after) =
            (decision["description_length_before"].as_f64(), decision["description_length_after"].as_f64());
        assert!(after.unwrap() < before.unwrap(), "{decision}");
    }
    // the accepted trial's steps are the run's: every step is logged once, in order
    let steps: Vec<u64> =
        records.iter().filter(|r| r["kind"] == "train").map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=450).collect::<Vec<u64>>());

    // the model goes on with the block, and its checkpoint carries the block's rule
    let names: Vec<&str> = accepted.iter().map(|d| d["candidate"].as_str().unwrap()).collect();
    let saved = checkpoint::load(&straight.join("model.safetensors")).unwrap();
    let recruited: Vec<&str> = saved.model.config.recruited_blocks.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(recruited, names);
    let stored = saved.locality.expect("the checkpoint stores its rules");
    for name in &names {
        let rule = stored.rules.rules.iter().find(|r| r.name == format!("{name} attends to its own block (recruited)"));
        let rule = rule.unwrap_or_else(|| panic!("no rule for {name}"));
        assert_eq!((rule.layers.as_deref(), rule.heads.as_deref()), (Some(&[1][..]), Some(&[0][..])));
    }
    // the snippet for the expert names the block and its members, and compiles against the corpus
    let snippet = std::fs::read_to_string(straight.join("recruited.rules")).unwrap();
    for decision in &accepted {
        assert!(snippet.contains(&format!("block {}", decision["candidate"].as_str().unwrap())), "{snippet}");
        for member in decision["members"].as_array().unwrap() {
            assert!(snippet.contains(member.as_str().unwrap()), "{snippet}");
        }
    }
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_ailla"))
        .args(["check", straight.join("recruited.rules").to_str().unwrap(), "--corpus", corpus.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));

    // stopped after the acceptance and resumed, the run ends where the straight one did, bit for bit
    let split = dir.path().join("split");
    let first = RunControl { stop_after: Some(300), ..RunControl::default() };
    let paused = train::train(&config, &split, &first, &Progress::Silent).unwrap();
    // a check due at the stop still runs, as it did in the straight run; a trial it accepts is adopted whole
    assert!((300..450).contains(&paused.steps_done), "{}", paused.steps_done);
    let resume = RunControl { resume: true, ..RunControl::default() };
    train::train(&config, &split, &resume, &Progress::Silent).unwrap();
    let resumed = checkpoint::load(&split.join("model.safetensors")).unwrap();
    assert_eq!(resumed.model, saved.model);
}

/// `ailla trial` puts an expert's block to the frozen-model test (METHOD §7) by default: the planted
/// allergens pay, where their cache held the target, and the run is not changed.
#[test]
fn ailla_trial_weighs_a_block_on_the_frozen_model() {
    let (dir, t) = trained(50);
    let run = dir.path().join("run");
    let weights_before = std::fs::read(run.join("model.safetensors")).unwrap();
    let block = PLANTED_ALLERGENS.join(", ");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ailla"))
        .args(["--threads", "2", "trial", run.to_str().unwrap(), "--block", &block, "--steps", "400", "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let probe: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(probe["trial"], "frozen");
    let verdict = &probe["blocks"][0];
    let decision = &verdict["decision"];
    assert_eq!(decision["members"].as_array().unwrap().len(), PLANTED_ALLERGENS.len());
    assert_eq!(decision["trial"], "frozen");
    assert_eq!(decision["noise_bits"], 0.0);
    let copied = &verdict["member_queries"];
    let saved_there = copied["bits_control"].as_f64().unwrap() - copied["bits_with_block"].as_f64().unwrap();
    assert!(copied["positions"].as_u64().unwrap() > 100 && saved_there > 0.0, "{verdict}");
    assert!(decision["accepted"].as_bool().unwrap(), "{decision}");
    let cost = decision["cost_bits"].as_f64().unwrap();
    let parts = decision["membership_bits"].as_f64().unwrap() + decision["parameter_bits"].as_f64().unwrap();
    assert!(
        (cost - parts).abs() < 1e-9
            && (decision["membership_bits"].as_f64().unwrap() - recruit::log2_binomial(t.vocabulary.len(), 16)).abs()
                < 1e-9
    );
    assert_eq!(std::fs::read(run.join("model.safetensors")).unwrap(), weights_before);
    let text = std::process::Command::new(env!("CARGO_BIN_EXE_ailla"))
        .args(["trial", run.to_str().unwrap(), "--block", &block, "--steps", "50"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("the cache held the target") && text.contains("verdict: "), "{text}");
}
