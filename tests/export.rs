//! `ailla export --format hf`: what the directory holds, what is refused, and — where Python has torch
//! and transformers — that transformers loads it and predicts what ailla predicts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ailla::checkpoint;
use ailla::locality::score::code_lengths;
use ailla::locality::Conditions;

fn ailla(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ailla")).args(args).output().expect("the ailla binary runs")
}

/// A small model trained briefly on the bundled corpus, with the bundled rules; one per tokenizer.
fn trained(dir: &Path, tokenizer: &str) -> PathBuf {
    let out = dir.join(format!("run-{tokenizer}"));
    let out_text = out.to_str().unwrap();
    let trained = ailla(&[
        "--threads",
        "1",
        "train",
        "--corpus",
        "bundled",
        "--tokenizer",
        tokenizer,
        "--steps",
        "30",
        "--batch-size",
        "4",
        "--ctx-len",
        "16",
        "--d-model",
        "16",
        "--layers",
        "2",
        "--heads",
        "2",
        "--out",
        out_text,
    ]);
    assert!(trained.status.success(), "{}", String::from_utf8_lossy(&trained.stderr));
    out.join("model.safetensors")
}

fn export(model: &Path, out: &Path) -> Output {
    ailla(&["export", model.to_str().unwrap(), "--format", "hf", "--out", out.to_str().unwrap()])
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn an_export_holds_gpt2s_config_weights_and_a_tokenizer_with_ailla_ids() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = trained(dir.path(), "word");
    let out = dir.path().join("hf");
    let exported = export(&model_path, &out);
    assert!(exported.status.success(), "{}", String::from_utf8_lossy(&exported.stderr));
    let stdout = String::from_utf8_lossy(&exported.stdout);
    // a model trained without rules is exported whole, with nothing to say about the dial
    assert!(stdout.starts_with("wrote ") && !stdout.contains("note:"), "{stdout}");

    let ckpt = checkpoint::load(&model_path).unwrap();
    let config = json(&out.join("config.json"));
    assert_eq!(config["model_type"], "gpt2");
    assert_eq!(config["activation_function"], "gelu_new");
    assert_eq!(config["n_embd"], 16);
    assert_eq!(config["n_layer"], 2);
    assert_eq!(config["n_positions"], 16);
    assert_eq!(config["vocab_size"], ckpt.vocabulary.len());
    assert_eq!(config["tie_word_embeddings"], true);
    assert_eq!(config["eos_token_id"], ckpt.vocabulary.id("<eos>").unwrap());

    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let shape = |name: &str| tensors.tensor(name).map(|t| t.shape().to_vec()).ok();
    assert_eq!(shape("transformer.wte.weight"), Some(vec![ckpt.vocabulary.len(), 16]));
    assert_eq!(shape("transformer.h.1.attn.c_attn.weight"), Some(vec![16, 48]));
    assert_eq!(shape("transformer.h.1.mlp.c_fc.weight"), Some(vec![16, ckpt.model.config.d_ff]));
    assert_eq!(shape("transformer.ln_f.bias"), Some(vec![16]));
    assert_eq!(shape("lm_head.weight"), None, "a tied model's head is its input embedding");
    // c_attn is [W_Q | W_K | W_V]: its column d + j is W_K's column j
    let c_attn = tensors.tensor("transformer.h.0.attn.c_attn.weight").unwrap();
    let value = |row: usize, column: usize| {
        let at = (row * 48 + column) * 4;
        f32::from_le_bytes(c_attn.data()[at..at + 4].try_into().unwrap())
    };
    assert_eq!(value(3, 16 + 5).to_bits(), ckpt.model.params.layers[0].wk[[3, 5]].to_bits());

    let tokenizer = json(&out.join("tokenizer.json"));
    let vocab = tokenizer["model"]["vocab"].as_object().unwrap();
    assert_eq!(vocab.len(), ckpt.vocabulary.len());
    for (id, token) in ckpt.vocabulary.tokens.iter().enumerate() {
        assert_eq!(vocab[token], id, "token {token}");
    }
    assert_eq!(json(&out.join("tokenizer_config.json"))["tokenizer_class"], "PreTrainedTokenizerFast");

    // a second export into the same directory is refused before anything is written
    let again = export(&model_path, &out);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("is not empty"));
}

/// The Python that has torch and transformers: `AILLA_PYTHON`, else `python3`.
fn python_with_transformers() -> Option<String> {
    let python = std::env::var("AILLA_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python).args(["-c", "import torch, transformers"]).output().ok()?;
    probe.status.success().then_some(python)
}

#[test]
fn transformers_loads_the_export_and_predicts_what_ailla_predicts() {
    let Some(python) = python_with_transformers() else {
        eprintln!("skipped: no Python with torch and transformers (set AILLA_PYTHON to one)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let splits = ailla::data::generator::bundled_corpus(ailla::data::generator::DEFAULT_SEED);
    // the test split's first lines: several windows and a short last one
    let start: String = splits.test.lines().take(40).map(|l| format!("{l}\n")).collect();
    let mut cases: Vec<(String, PathBuf, String)> =
        ["word", "char"].iter().map(|t| (t.to_string(), trained(dir.path(), t), start.clone())).collect();
    // a model of your own (the quickstart's, say) on the whole bundled test split
    if let Ok(path) = std::env::var("AILLA_EXPORT_CHECK_CHECKPOINT") {
        cases.push(("given".into(), PathBuf::from(path), splits.test.clone()));
    }
    for (tokenizer, model_path, text) in cases {
        let out = dir.path().join(format!("hf-{tokenizer}"));
        assert!(export(&model_path, &out).status.success());
        let ckpt = checkpoint::load(&model_path).unwrap();
        let ids = ckpt.vocabulary.encode(&text);
        let nll: Vec<f64> = code_lengths(&ckpt.model, &ids, 8, &Conditions::Plain)
            .into_iter()
            .map(|bits| bits * std::f64::consts::LN_2)
            .collect();
        let text_path = dir.path().join(format!("text-{tokenizer}.txt"));
        std::fs::write(&text_path, &text).unwrap();
        let expected_path = dir.path().join(format!("expected-{tokenizer}.json"));
        std::fs::write(&expected_path, serde_json::json!({ "ids": ids, "nll_nats": nll }).to_string()).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hf_export_check.py");
        let checked = Command::new(&python)
            .args([script.as_os_str(), out.as_os_str(), text_path.as_os_str(), expected_path.as_os_str()])
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&checked.stdout);
        assert!(checked.status.success(), "{tokenizer}: {report}{}", String::from_utf8_lossy(&checked.stderr));
        eprintln!("{tokenizer}: {report}");
    }
}
