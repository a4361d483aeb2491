//! The model's configuration: every size, the LayerNorm epsilon, the GELU form, blocks and copy paths.

use super::*;

/// The GELU form; stored in checkpoints so that other frameworks rebuild the same function.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Gelu {
    /// `½x(1 + tanh(√(2/π)(x + 0.044715x³)))`, PyTorch's `gelu(approximate="tanh")`.
    Tanh,
}

/// Every size of the model; all of it goes into the checkpoint metadata.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub vocab_size: usize,
    /// Learned positions, hence the longest context the model accepts.
    pub ctx_len: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_layers: usize,
    pub d_ff: usize,
    pub ln_eps: f64,
    /// Output projection shares the token embedding (`U = E`).
    pub tied: bool,
    pub gelu: Gelu,
    /// Semantic blocks recruited during training (METHOD §7), each with a block embedding.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recruited_blocks: Vec<RecruitedBlock>,
    /// The copy paths' names (METHOD §4), in the order of their gates' rows; absent from the JSON when
    /// there are none, so checkpoints without copy paths keep their bytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copy_paths: Vec<String>,
}

/// A block that recruitment admitted: its members get the block's embedding added to their input.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RecruitedBlock {
    pub name: String,
    /// Sorted vocabulary ids.
    pub members: Vec<u32>,
}

impl Config {
    pub fn validate(&self) -> crate::Result<()> {
        crate::Error::require_counts([
            ("model.vocab_size", self.vocab_size),
            ("model.ctx_len", self.ctx_len),
            ("model.d_model", self.d_model),
            ("model.n_heads", self.n_heads),
            ("model.n_layers", self.n_layers),
            ("model.d_ff", self.d_ff),
        ])?;
        if !self.d_model.is_multiple_of(self.n_heads) {
            return Err(crate::Error::invalid(
                "model.n_heads",
                format!("d_model {} is not divisible by {} heads", self.d_model, self.n_heads),
            ));
        }
        if !(self.ln_eps > 0.0 && self.ln_eps.is_finite()) {
            return Err(crate::Error::invalid("model.ln_eps", "must be a positive number"));
        }
        for (index, name) in self.copy_paths.iter().enumerate() {
            if name.is_empty() || self.copy_paths[..index].contains(name) {
                return Err(crate::Error::invalid(
                    "model.copy_paths",
                    format!("copy path `{name}` is empty or repeated"),
                ));
            }
        }
        Ok(())
    }

    pub fn head_size(&self) -> usize {
        self.d_model / self.n_heads
    }

    /// `k + 1` for members of recruited block `k`, 0 for every other vocabulary id.
    pub fn block_lookup(&self) -> Vec<u32> {
        let mut lookup = vec![0u32; self.vocab_size];
        for (k, block) in self.recruited_blocks.iter().enumerate() {
            for &member in &block.members {
                if let Some(slot) = lookup.get_mut(member as usize) {
                    *slot = k as u32 + 1;
                }
            }
        }
        lookup
    }

    /// Multiply-adds ×2 of one training token (forward and backward), for GFLOP/s figures: the usual
    /// `6·P` for the weight products plus attention's `q·kᵀ` and `α·v` over a causal window of `T/2` keys
    /// on average.
    pub fn training_flops_per_token(&self, seq_len: usize) -> f64 {
        let (d, ff, v) = (self.d_model as f64, self.d_ff as f64, self.vocab_size as f64);
        let per_layer = 4.0 * d * d + 2.0 * d * ff;
        let weight_macs = self.n_layers as f64 * per_layer + d * v;
        let attention_macs = self.n_layers as f64 * 2.0 * d * (seq_len as f64 / 2.0);
        6.0 * weight_macs + 6.0 * attention_macs
    }
}
