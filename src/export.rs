//! `ailla export --format hf`: a checkpoint as a directory that Hugging Face `transformers` loads as
//! `GPT2LMHeadModel`, with a fast tokenizer that gives ailla's ids.
//!
//! The engine is GPT-2's architecture (pre-LayerNorm blocks, learned positions, the tanh GELU, `1/√h`
//! attention scale), so the weights map one to one. Matrices are stored `[in, out]` in both, GPT-2's
//! `Conv1D` layout, and need no transpose; `c_attn` is `[W_Q | W_K | W_V]` side by side. What GPT-2
//! cannot express is the locality dial: rules and copy paths act only at λ > 0, so the export is the
//! model at λ = 0 and says so. Recruited block embeddings act at every λ; they are folded into the
//! input embedding, which unties it from the output projection.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ndarray::{concatenate, Array2, ArrayViewD, Axis};
use serde_json::json;

use crate::checkpoint::{self, Checkpoint};
use crate::data::tokenizer::{TokenizerKind, EOS, UNK};
use crate::engine::model::Gelu;
use crate::{Error, Result};

/// What an export wrote, and what of the model it could not carry.
#[derive(Clone, Debug, PartialEq)]
pub struct Exported {
    pub dir: PathBuf,
    pub files: Vec<String>,
    /// What the exported model leaves out or changes, one sentence each.
    pub notes: Vec<String>,
}

/// The file names of an export, in the order they are written.
pub const FILES: [&str; 4] = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"];

/// Writes `checkpoint` into `out` (which must not exist, or be empty) as a `transformers` GPT-2.
pub fn export_hf(checkpoint: &Checkpoint, out: &Path) -> Result<Exported> {
    if out.exists() {
        let mut entries = std::fs::read_dir(out).map_err(|e| Error::io(out, e))?;
        if entries.next().is_some() {
            return Err(Error::invalid("--out", format!("{} is not empty; name a new directory", out.display())));
        }
    }
    let model = &checkpoint.model;
    let config = &model.config;
    let Gelu::Tanh = config.gelu;
    let mut notes = Vec::new();
    if let Some(locality) = &checkpoint.locality {
        notes.push(format!(
            "its rules ({} blocks, {} rules) bias attention only at λ > 0, which GPT-2 cannot express: \
             this is the model at λ = 0",
            locality.rules.blocks.len(),
            locality.rules.rules.len()
        ));
    }
    if !config.copy_paths.is_empty() {
        notes.push(format!(
            "its {} copy path(s) ({}) are gated by λ and shut at λ = 0: they are not exported",
            config.copy_paths.len(),
            config.copy_paths.join(", ")
        ));
    }
    let tensors = tensors(checkpoint, &mut notes)?;
    let tied = config.tied && config.recruited_blocks.is_empty();
    let vocabulary = &checkpoint.vocabulary;
    let eos = (vocabulary.kind == TokenizerKind::Word).then(|| vocabulary.id(EOS)).flatten();
    let hf_config = json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.ctx_len,
        "n_ctx": config.ctx_len,
        "n_embd": config.d_model,
        "n_layer": config.n_layers,
        "n_head": config.n_heads,
        "n_inner": config.d_ff,
        // the engine's GELU is the tanh form, which transformers calls `gelu_new`
        "activation_function": "gelu_new",
        "layer_norm_epsilon": config.ln_eps,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "summary_first_dropout": 0.0,
        "scale_attn_weights": true,
        "scale_attn_by_inverse_layer_idx": false,
        "reorder_and_upcast_attn": false,
        "tie_word_embeddings": tied,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "torch_dtype": "float32",
        "ailla": { "step": checkpoint.step, "tokenizer": vocabulary.kind.name(), "exported_at_lambda": 0.0 },
    });
    let tokenizer = tokenizer_json(vocabulary.kind, &vocabulary.tokens);
    let mut tokenizer_config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": UNK,
        "model_max_length": config.ctx_len,
        "clean_up_tokenization_spaces": false,
    });
    if eos.is_some() {
        tokenizer_config["eos_token"] = json!(EOS);
        tokenizer_config["bos_token"] = json!(EOS);
    }
    let pretty = |value: &serde_json::Value| -> Result<Vec<u8>> {
        serde_json::to_vec_pretty(value).map_err(|e| Error::Numeric(e.to_string()))
    };
    let contents: [Vec<u8>; 4] =
        [pretty(&hf_config)?, safetensors_bytes(&tensors)?, pretty(&tokenizer)?, pretty(&tokenizer_config)?];
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    for (name, bytes) in FILES.iter().zip(&contents) {
        checkpoint::atomic_write(&out.join(name), bytes)?;
    }
    Ok(Exported { dir: out.to_path_buf(), files: FILES.iter().map(|f| f.to_string()).collect(), notes })
}

/// A tensor under its GPT-2 name: values as a matrix (vectors as one row) and its stored shape.
type Named = (String, Array2<f32>, Vec<usize>);

/// The model's weights under GPT-2's names.
fn tensors(checkpoint: &Checkpoint, notes: &mut Vec<String>) -> Result<Vec<Named>> {
    let model = &checkpoint.model;
    let params = &model.params;
    let config = &model.config;
    let mut out: Vec<Named> = Vec::new();
    let matrix = |name: &str, m: Array2<f32>| {
        let shape = m.shape().to_vec();
        (name.to_string(), m, shape)
    };
    let vector = |name: &str, v: &ndarray::Array1<f32>| {
        let m = v.clone().insert_axis(Axis(0));
        (name.to_string(), m, vec![v.len()])
    };
    let mut input_embedding = params.tok_emb.clone();
    if !config.recruited_blocks.is_empty() {
        // x⁰ = E[t] + P[i] + B[k(t)]: each token's block row, as the engine looks it up, folds into
        // its input embedding
        for (token, &k) in config.block_lookup().iter().enumerate().take(input_embedding.nrows()) {
            if k > 0 {
                let mut row = input_embedding.row_mut(token);
                row += &params.block_emb.row(k as usize - 1);
            }
        }
        notes.push(format!(
            "its {} recruited block embedding(s) are folded into the input embedding, which no longer \
             equals the output projection: the export is untied",
            config.recruited_blocks.len()
        ));
    }
    out.push(matrix("transformer.wte.weight", input_embedding));
    out.push(matrix("transformer.wpe.weight", params.pos_emb.clone()));
    for (i, layer) in params.layers.iter().enumerate() {
        let name = |part: &str| format!("transformer.h.{i}.{part}");
        let mismatched =
            |e: ndarray::ShapeError| Error::Numeric(format!("layer {i}: W_Q, W_K, W_V differ in shape: {e}"));
        let qkv = concatenate(Axis(1), &[layer.wq.view(), layer.wk.view(), layer.wv.view()]).map_err(mismatched)?;
        let qkv_bias =
            concatenate(Axis(0), &[layer.bq.view(), layer.bk.view(), layer.bv.view()]).map_err(mismatched)?;
        out.push(vector(&name("ln_1.weight"), &layer.ln1_weight));
        out.push(vector(&name("ln_1.bias"), &layer.ln1_bias));
        out.push(matrix(&name("attn.c_attn.weight"), qkv));
        out.push(vector(&name("attn.c_attn.bias"), &qkv_bias));
        out.push(matrix(&name("attn.c_proj.weight"), layer.wo.clone()));
        out.push(vector(&name("attn.c_proj.bias"), &layer.bo));
        out.push(vector(&name("ln_2.weight"), &layer.ln2_weight));
        out.push(vector(&name("ln_2.bias"), &layer.ln2_bias));
        out.push(matrix(&name("mlp.c_fc.weight"), layer.w1.clone()));
        out.push(vector(&name("mlp.c_fc.bias"), &layer.b1));
        out.push(matrix(&name("mlp.c_proj.weight"), layer.w2.clone()));
        out.push(vector(&name("mlp.c_proj.bias"), &layer.b2));
    }
    out.push(vector("transformer.ln_f.weight", &params.ln_f_weight));
    out.push(vector("transformer.ln_f.bias", &params.ln_f_bias));
    match &params.head {
        // the engine's untied head is `[d, V]`; transformers' `lm_head` is a `Linear`, `[V, d]`
        Some(head) => out.push(matrix("lm_head.weight", head.t().to_owned())),
        None if !config.recruited_blocks.is_empty() => out.push(matrix("lm_head.weight", params.tok_emb.clone())),
        None => {}
    }
    Ok(out)
}

/// A safetensors file with the `{"format": "pt"}` metadata transformers asks of PyTorch weights.
fn safetensors_bytes(tensors: &[Named]) -> Result<Vec<u8>> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, m, shape)| {
            let standard = m.as_standard_layout();
            let view: ArrayViewD<f32> = standard.view().into_dyn();
            let data: Vec<u8> = view.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.clone(), shape.clone(), data)
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, shape, data)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                .map(|view| (name.as_str(), view))
                .map_err(|e| Error::Numeric(format!("tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(metadata)).map_err(|e| Error::Numeric(format!("could not serialise: {e}")))
}

/// A `tokenizers` JSON file whose pipeline gives the ids of [`crate::data::Vocabulary::encode`] on
/// text that ends with a newline: words split on whitespace with every newline read as `<eos>`, or
/// every character on its own. (ailla also ends a last line without a newline with `<eos>`, and reads
/// a literal `<unk>` in a character text as five characters; the exported tokenizer does neither.)
fn tokenizer_json(kind: TokenizerKind, tokens: &[String]) -> serde_json::Value {
    let vocab: serde_json::Map<String, serde_json::Value> =
        tokens.iter().enumerate().map(|(id, token)| (token.clone(), json!(id))).collect();
    let special = |content: &str, id: usize| {
        json!({ "id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": true })
    };
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| t.as_str() == UNK || t.as_str() == EOS)
        .map(|(id, t)| special(t, id))
        .collect();
    let (normalizer, pre_tokenizer, decoder) = match kind {
        // ailla ends every line with `<eos>`: the newline becomes that word before the split
        TokenizerKind::Word => (
            json!({ "type": "Replace", "pattern": { "String": "\n" }, "content": format!(" {EOS} ") }),
            json!({ "type": "WhitespaceSplit" }),
            serde_json::Value::Null,
        ),
        TokenizerKind::Char => (
            serde_json::Value::Null,
            json!({ "type": "Split", "pattern": { "Regex": "[\\s\\S]" }, "behavior": "Isolated", "invert": false }),
            json!({ "type": "Fuse" }),
        ),
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": decoder,
        "model": { "type": "WordLevel", "vocab": vocab, "unk_token": UNK },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::StoredLocality;

    fn tied_with_a_block() -> Checkpoint {
        let mut checkpoint = crate::checkpoint::tests::tiny_with(true);
        checkpoint.model.add_block("letters", &[3, 5]).unwrap();
        checkpoint.model.params.block_emb.fill(0.25);
        checkpoint.locality = Some(StoredLocality {
            rules: crate::locality::RuleSpec { blocks: Vec::new(), rules: Vec::new(), own_block_default: true },
            dial: crate::locality::DialSettings::default(),
            progressive_beta: None,
        });
        checkpoint
    }

    fn tensor(bytes: &[u8], name: &str) -> (Vec<usize>, Vec<f32>) {
        let file = safetensors::SafeTensors::deserialize(bytes).unwrap();
        let view = file.tensor(name).unwrap();
        let values = view.data().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        (view.shape().to_vec(), values)
    }

    #[test]
    fn a_recruited_block_folds_into_the_input_embedding_and_unties_the_head() {
        let checkpoint = tied_with_a_block();
        let dir = tempfile::tempdir().unwrap();
        let exported = export_hf(&checkpoint, &dir.path().join("hf")).unwrap();
        assert!(exported.notes.iter().any(|n| n.contains("folded into the input embedding")), "{:?}", exported.notes);
        assert!(exported.notes.iter().any(|n| n.contains("the model at λ = 0")), "{:?}", exported.notes);
        let bytes = std::fs::read(dir.path().join("hf/model.safetensors")).unwrap();
        let (shape, wte) = tensor(&bytes, "transformer.wte.weight");
        let (_, head) = tensor(&bytes, "lm_head.weight");
        let d = checkpoint.model.config.d_model;
        assert_eq!(shape, vec![checkpoint.vocabulary.len(), d]);
        let embedding = &checkpoint.model.params.tok_emb;
        for token in 0..checkpoint.vocabulary.len() {
            // members read E[t] + B[k]; everyone else, and the output projection, E[t] alone
            let block = if token == 3 || token == 5 { 0.25 } else { 0.0 };
            for j in 0..d {
                assert_eq!(wte[token * d + j].to_bits(), (embedding[[token, j]] + block).to_bits());
                assert_eq!(head[token * d + j].to_bits(), embedding[[token, j]].to_bits());
            }
        }
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("hf/config.json")).unwrap()).unwrap();
        assert_eq!(config["tie_word_embeddings"], false);
        let metadata = safetensors::SafeTensors::read_metadata(&bytes).unwrap().1;
        assert_eq!(metadata.metadata().as_ref().and_then(|m| m.get("format")).map(String::as_str), Some("pt"));
    }
}
