//! Checkpoints as safetensors files that other frameworks load directly.
//!
//! Weights are `f32`, row-major, named as in [`Params::named`], with matrices `[in, out]` (`y = x·W`).
//! One metadata entry, `ailla`, holds canonical JSON: the model config (every size, LayerNorm epsilon,
//! the GELU form), the tokenizer and its vocabulary, and the training step. A single entry keeps the file
//! byte-identical for identical models (safetensors writes several entries in hash order).
//! The optimizer state lives in a sibling file, `<name>.optim.safetensors`, so training resumes exactly.
//! Every write goes to a temporary file in the same directory and is renamed into place, so a crash or a
//! full disk never leaves a half-written checkpoint under the real name.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use safetensors::tensor::{Dtype, Metadata as Header, SafeTensors, View};
use serde::{Deserialize, Serialize};

use crate::data::Vocabulary;
use crate::engine::optim::AdamW;
use crate::engine::{Config, Model, Params};
use crate::locality::{DialSettings, RuleSpec};
use crate::{Error, Result};

const FORMAT: &str = "ailla-checkpoint";
const FORMAT_VERSION: u32 = 1;
const METADATA_KEY: &str = "ailla";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    format: String,
    version: u32,
    config: Config,
    tokenizer: Vocabulary,
    step: usize,
    /// The rules and dial the model was trained with, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    locality: Option<StoredLocality>,
}

/// What a checkpoint records of its training rules, so that evaluation across the dial can reuse them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoredLocality {
    pub rules: RuleSpec,
    pub dial: DialSettings,
    #[serde(default)]
    pub progressive_beta: Option<f64>,
}

/// A trained model with the vocabulary it reads and the step it was saved at.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub model: Model<f32>,
    pub vocabulary: Vocabulary,
    pub step: usize,
    pub locality: Option<StoredLocality>,
}

struct F32Tensor {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl F32Tensor {
    fn new(tensor: ndarray::ArrayViewD<f32>) -> Self {
        let mut bytes = Vec::with_capacity(tensor.len() * 4);
        // iteration in logical (row-major) order whatever the memory layout
        for value in tensor.iter() {
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        F32Tensor { shape: tensor.shape().to_vec(), bytes }
    }
}

impl View for &F32Tensor {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// The optimizer file beside a model file: `model.safetensors` → `model.optim.safetensors`.
pub fn optimizer_path(model_path: &Path) -> PathBuf {
    let stem = model_path.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
    model_path.with_file_name(format!("{stem}.optim.safetensors"))
}

/// Writes `bytes` to `path` through a temporary sibling, an fsync and a rename, then fsyncs the
/// directory: after a crash at any instant `path` holds either its old content or all of `bytes`.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(path, e))?;
    crate::faults::filesystem_step("temporary file written");
    // temporary files are created owner-only; a checkpoint is an ordinary file
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let permissions = std::fs::Permissions::from_mode(0o644);
        tmp.as_file().set_permissions(permissions).map_err(|e| Error::io(path, e))?;
    }
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    crate::faults::filesystem_step("temporary file synced");
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    crate::faults::filesystem_step("renamed into place");
    sync_directory(dir)
}

/// Makes a rename or link in `dir` durable (a no-op where directories cannot be opened).
pub fn sync_directory(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let handle = std::fs::File::open(dir).map_err(|e| Error::io(dir, e))?;
        handle.sync_all().map_err(|e| Error::io(dir, e))?;
    }
    crate::faults::filesystem_step("directory synced");
    Ok(())
}

fn serialize(tensors: &[(String, F32Tensor)], metadata: String) -> Result<Vec<u8>> {
    let mut info = HashMap::new();
    info.insert(METADATA_KEY.to_string(), metadata);
    safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(info))
        .map_err(|e| Error::Numeric(format!("could not serialise checkpoint: {e}")))
}

/// The bytes of a checkpoint file: the same model gives the same bytes.
pub fn to_bytes(checkpoint: &Checkpoint) -> Result<Vec<u8>> {
    let metadata = Metadata {
        format: FORMAT.into(),
        version: FORMAT_VERSION,
        config: checkpoint.model.config.clone(),
        tokenizer: checkpoint.vocabulary.clone(),
        step: checkpoint.step,
        locality: checkpoint.locality.clone(),
    };
    let json = serde_json::to_string(&metadata).map_err(|e| Error::Numeric(e.to_string()))?;
    let tensors: Vec<(String, F32Tensor)> =
        checkpoint.model.params.named().into_iter().map(|(n, t)| (n, F32Tensor::new(t))).collect();
    serialize(&tensors, json)
}

pub fn save(path: &Path, checkpoint: &Checkpoint) -> Result<()> {
    atomic_write(path, &to_bytes(checkpoint)?)
}

fn corrupt(path: &Path, message: impl Into<String>) -> Error {
    Error::Checkpoint { path: path.to_path_buf(), message: message.into() }
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// A safetensors file parsed once: its header, and the data the header's offsets point into.
struct Parsed<'a> {
    header: Header,
    data: &'a [u8],
}

impl<'a> Parsed<'a> {
    fn new(path: &Path, bytes: &'a [u8]) -> Result<Self> {
        // `read_metadata` checks that every tensor's offsets lie inside the buffer and tile it exactly
        let (length, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| corrupt(path, format!("{e} (truncated or not a safetensors file?)")))?;
        Ok(Parsed { header, data: &bytes[8 + length..] })
    }

    fn metadata_json(&self, path: &Path) -> Result<&str> {
        self.header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(METADATA_KEY))
            .map(String::as_str)
            .ok_or_else(|| corrupt(path, format!("no `{METADATA_KEY}` metadata entry (not written by ailla?)")))
    }

    fn tensor_count(&self) -> usize {
        self.header.tensors().len()
    }
}

/// The training step a checkpoint was saved at, read from its header alone: choosing the most advanced
/// of several checkpoints should not read every weight of each.
pub fn step_of(path: &Path) -> Result<usize> {
    use std::io::Read;
    #[derive(Deserialize)]
    struct StepOnly {
        step: usize,
    }
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut length = [0u8; 8];
    file.read_exact(&mut length).map_err(|e| corrupt(path, format!("no safetensors header: {e}")))?;
    let length = u64::from_le_bytes(length);
    let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if length > size.saturating_sub(8) {
        return Err(corrupt(path, format!("header of {length} bytes in a file of {size} (truncated?)")));
    }
    let mut header = vec![0u8; length as usize];
    file.read_exact(&mut header).map_err(|e| corrupt(path, format!("truncated header: {e}")))?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| corrupt(path, format!("header is not JSON: {e}")))?;
    let json = header["__metadata__"][METADATA_KEY]
        .as_str()
        .ok_or_else(|| corrupt(path, format!("no `{METADATA_KEY}` metadata entry (not written by ailla?)")))?;
    let metadata: StepOnly =
        serde_json::from_str(json).map_err(|e| corrupt(path, format!("metadata entry `{METADATA_KEY}`: {e}")))?;
    Ok(metadata.step)
}

/// Fills `target` from the tensor `name` of `file`, checking dtype, shape and finiteness.
fn fill(path: &Path, file: &Parsed, name: &str, mut target: ndarray::ArrayViewMutD<f32>) -> Result<()> {
    let info = file.header.info(name).ok_or_else(|| corrupt(path, format!("tensor `{name}` is missing")))?;
    if info.dtype != Dtype::F32 {
        return Err(corrupt(path, format!("tensor `{name}` is {:?}, expected F32", info.dtype)));
    }
    if info.shape != target.shape() {
        return Err(corrupt(
            path,
            format!("tensor `{name}` has shape {:?}, the config implies {:?}", info.shape, target.shape()),
        ));
    }
    let (start, end) = info.data_offsets;
    for (slot, chunk) in target.iter_mut().zip(file.data[start..end].chunks_exact(4)) {
        *slot = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    if target.iter().any(|v| !v.is_finite()) {
        return Err(corrupt(path, format!("tensor `{name}` contains NaN or infinite values")));
    }
    Ok(())
}

pub fn load(path: &Path) -> Result<Checkpoint> {
    load_bytes(path, &read_file(path)?)
}

/// A checkpoint from the bytes of the file at `path` (named in errors).
pub fn load_bytes(path: &Path, bytes: &[u8]) -> Result<Checkpoint> {
    let file = Parsed::new(path, bytes)?;
    let metadata: Metadata = serde_json::from_str(file.metadata_json(path)?)
        .map_err(|e| corrupt(path, format!("metadata entry `{METADATA_KEY}`: {e}")))?;
    if metadata.format != FORMAT || metadata.version != FORMAT_VERSION {
        return Err(corrupt(
            path,
            format!(
                "format {} version {}, this ailla reads {FORMAT} version {FORMAT_VERSION}",
                metadata.format, metadata.version
            ),
        ));
    }
    metadata.config.validate().map_err(|e| corrupt(path, e.to_string()))?;
    let vocabulary = metadata.tokenizer.reindex();
    if vocabulary.len() != metadata.config.vocab_size {
        return Err(corrupt(
            path,
            format!("vocabulary has {} entries, config says {}", vocabulary.len(), metadata.config.vocab_size),
        ));
    }
    // an absurd shape in the metadata is an error before anything is allocated for it: the weights its
    // matrices need must all be in the file
    let config = &metadata.config;
    let (d, ff, layers) = (config.d_model, config.d_ff, config.n_layers);
    let least_weights =
        config.vocab_size.checked_add(config.ctx_len).and_then(|rows| rows.checked_mul(d)).and_then(|embeddings| {
            let per_layer = d.checked_mul(d)?.checked_mul(4)?.checked_add(d.checked_mul(ff)?.checked_mul(2)?)?;
            embeddings.checked_add(per_layer.checked_mul(layers)?)
        });
    if least_weights.is_none_or(|n| n.saturating_mul(4) > file.data.len()) {
        return Err(corrupt(
            path,
            format!(
                "the config (vocabulary {}, ctx_len {}, d_model {d}, d_ff {ff}, {layers} layers) needs more weights \
                 than the file's {} bytes of tensors hold",
                config.vocab_size,
                config.ctx_len,
                file.data.len()
            ),
        ));
    }
    let mut params = Params::<f32>::zeros(&metadata.config);
    for (name, target) in params.named_mut() {
        fill(path, &file, &name, target)?;
    }
    let expected = params.named().len();
    if file.tensor_count() != expected {
        return Err(corrupt(path, format!("{} tensors, the config implies {expected}", file.tensor_count())));
    }
    Ok(Checkpoint {
        model: Model { config: metadata.config, params },
        vocabulary,
        step: metadata.step,
        locality: metadata.locality,
    })
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OptimizerMetadata {
    format: String,
    version: u32,
    step: usize,
}

pub fn save_optimizer(path: &Path, optimizer: &AdamW<f32>, params: &Params<f32>) -> Result<()> {
    atomic_write(path, &optimizer_to_bytes(optimizer, params)?)
}

/// The bytes of an optimizer file for the model `params`.
pub fn optimizer_to_bytes(optimizer: &AdamW<f32>, params: &Params<f32>) -> Result<Vec<u8>> {
    let mut tensors = Vec::new();
    for (index, (name, _)) in params.named().into_iter().enumerate() {
        tensors.push((format!("m.{name}"), F32Tensor::new(optimizer.m[index].view())));
        tensors.push((format!("v.{name}"), F32Tensor::new(optimizer.v[index].view())));
    }
    let metadata =
        OptimizerMetadata { format: format!("{FORMAT}-optimizer"), version: FORMAT_VERSION, step: optimizer.step };
    let json = serde_json::to_string(&metadata).map_err(|e| Error::Numeric(e.to_string()))?;
    serialize(&tensors, json)
}

pub fn load_optimizer(path: &Path, params: &Params<f32>) -> Result<AdamW<f32>> {
    load_optimizer_bytes(path, &read_file(path)?, params)
}

/// Optimizer state for `params` from the bytes of the file at `path` (named in errors).
pub fn load_optimizer_bytes(path: &Path, bytes: &[u8], params: &Params<f32>) -> Result<AdamW<f32>> {
    let file = Parsed::new(path, bytes)?;
    let metadata: OptimizerMetadata = serde_json::from_str(file.metadata_json(path)?)
        .map_err(|e| corrupt(path, format!("metadata entry `{METADATA_KEY}`: {e}")))?;
    let mut optimizer = AdamW::new(params);
    optimizer.step = metadata.step;
    for (index, (name, _)) in params.named().into_iter().enumerate() {
        let (m, v): (&mut ArrayD<f32>, &mut ArrayD<f32>) = (&mut optimizer.m[index], &mut optimizer.v[index]);
        fill(path, &file, &format!("m.{name}"), m.view_mut())?;
        fill(path, &file, &format!("v.{name}"), v.view_mut())?;
    }
    Ok(optimizer)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::TokenizerKind;
    use crate::engine::Gelu;

    /// A model small enough to save in a blink, shared by the tests of checkpoint files.
    pub(crate) fn tiny() -> Checkpoint {
        tiny_with(false)
    }

    /// [`tiny`], its output projection tied to the input embedding or not.
    pub(crate) fn tiny_with(tied: bool) -> Checkpoint {
        let vocabulary = Vocabulary::build(TokenizerKind::Word, "a b c d e f g", 9);
        let config = Config {
            vocab_size: vocabulary.len(),
            ctx_len: 4,
            d_model: 8,
            n_heads: 2,
            n_layers: 1,
            d_ff: 16,
            ln_eps: 1e-5,
            tied,
            gelu: Gelu::Tanh,
            recruited_blocks: Vec::new(),
            copy_paths: Vec::new(),
        };
        Checkpoint { model: Model::init(config, 5).unwrap(), vocabulary, step: 12, locality: None }
    }

    #[test]
    fn round_trip_is_exact_and_bytes_are_stable() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.safetensors"), dir.path().join("b.safetensors"));
        let original = tiny();
        save(&a, &original).unwrap();
        save(&b, &original).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let loaded = load(&a).unwrap();
        assert_eq!(loaded.model, original.model);
        assert_eq!(loaded.vocabulary, original.vocabulary);
        assert_eq!(loaded.step, 12);
    }

    #[test]
    fn copy_gates_round_trip_under_their_own_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("copy.safetensors");
        let plain = tiny();
        let mut checkpoint = tiny();
        checkpoint.model.add_copy_path("allergens").unwrap();
        checkpoint.model.add_copy_path("previous occurrence").unwrap();
        checkpoint.model.params.copy_gate_weight[[1, 3]] = 0.25;
        checkpoint.model.params.copy_gate_bias[0] = -2.5;
        save(&path, &checkpoint).unwrap();
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.model, checkpoint.model);
        assert_eq!(loaded.model.config.copy_paths, vec!["allergens", "previous occurrence"]);
        // the file holds the plain model's tensors and the two gates, as other frameworks see them
        let bytes = std::fs::read(&path).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let mut names: Vec<String> = file.names().into_iter().map(String::from).collect();
        names.sort();
        let mut expected: Vec<String> = plain.model.params.named().into_iter().map(|(n, _)| n).collect();
        expected.extend(["copy.bias".to_string(), "copy.weight".to_string()]);
        expected.sort();
        assert_eq!(names, expected);
        assert_eq!(file.tensor("copy.weight").unwrap().shape(), &[2, 8]);
        assert_eq!(file.tensor("copy.bias").unwrap().shape(), &[2]);
        // and the optimizer state follows them
        let optimizer_file = dir.path().join("copy.optim.safetensors");
        let mut optimizer = AdamW::new(&checkpoint.model.params);
        let last = optimizer.m.len() - 1;
        optimizer.m[last].fill(0.5);
        save_optimizer(&optimizer_file, &optimizer, &checkpoint.model.params).unwrap();
        assert_eq!(load_optimizer(&optimizer_file, &checkpoint.model.params).unwrap(), optimizer);
        // a model without copy paths writes no trace of them
        let plain_path = dir.path().join("plain.safetensors");
        save(&plain_path, &plain).unwrap();
        let text = String::from_utf8_lossy(&std::fs::read(&plain_path).unwrap()).into_owned();
        assert!(!text.contains("copy"));
    }

    #[test]
    fn optimizer_state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.optim.safetensors");
        let checkpoint = tiny();
        let mut optimizer = AdamW::new(&checkpoint.model.params);
        optimizer.step = 3;
        optimizer.m[2].fill(0.5);
        optimizer.v[4].fill(0.25);
        save_optimizer(&path, &optimizer, &checkpoint.model.params).unwrap();
        assert_eq!(load_optimizer(&path, &checkpoint.model.params).unwrap(), optimizer);
        assert_eq!(optimizer_path(Path::new("x/model.safetensors")), Path::new("x/model.optim.safetensors"));
    }

    #[test]
    fn truncated_garbage_and_missing_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        save(&path, &tiny()).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(step_of(&path).unwrap(), tiny().step);

        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("model.safetensors") && err.contains("not a usable ailla checkpoint"), "{err}");

        std::fs::write(&path, b"hello").unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("truncated or not a safetensors file"));
        assert!(step_of(&path).unwrap_err().to_string().contains("model.safetensors"));

        let err = load(&dir.path().join("absent.safetensors")).unwrap_err().to_string();
        assert!(err.contains("absent.safetensors"), "{err}");

        // a flipped weight byte that makes a NaN is caught, not silently evaluated
        let mut poisoned = bytes.clone();
        let len = poisoned.len();
        poisoned[len - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
        std::fs::write(&path, &poisoned).unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("NaN"));
    }
}
