//! The PyTorch reference of `ailla bench --compare-torch`: `benches/torch_reference.py bench` run in a
//! child process on the same model, batch and threads, held to the instruction set ailla runs on.

use serde::{Deserialize, Serialize};

use super::{median, BenchConfig};
use crate::{Error, Result};

/// PyTorch's figures from several rounds: the median training and the median evaluation rate. `None`
/// for no rounds (no torch in that Python).
pub fn median_torch_of_rounds(rounds: Vec<TorchResult>) -> Option<TorchResult> {
    let of = |rate: fn(&TorchResult) -> f64| median(rounds.iter().map(rate).collect());
    let (train, eval) = (of(|r| r.train_tokens_per_s), of(|r| r.eval_tokens_per_s));
    let first = rounds.into_iter().next()?;
    Some(TorchResult { train_tokens_per_s: train, eval_tokens_per_s: eval, ..first })
}

/// PyTorch's figures for one configuration, as `benches/torch_reference.py bench` prints them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct TorchResult {
    pub name: String,
    pub threads: usize,
    pub train_tokens_per_s: f64,
    pub eval_tokens_per_s: f64,
    pub torch_version: String,
}

/// The variables that hold PyTorch to the instruction set ailla runs on, where `AILLA_SIMD` capped it
/// below the CPU's (`detected`): ATen's own kernels, MKL's products and oneDNN's, so that both sides of
/// the comparison compute as on the narrower CPU. Empty without a cap.
fn torch_simd_cap(
    simd: crate::engine::simd::Simd,
    detected: crate::engine::simd::Simd,
) -> Vec<(&'static str, &'static str)> {
    use crate::engine::simd::Simd;
    if simd >= detected {
        return Vec::new();
    }
    let (aten, mkl, onednn) = match simd {
        Simd::Avx512 => return Vec::new(),
        Simd::Avx2 => ("avx2", "AVX2", "AVX2"),
        Simd::Baseline => ("default", "SSE4_2", "SSE41"),
    };
    vec![("ATEN_CPU_CAPABILITY", aten), ("MKL_ENABLE_INSTRUCTIONS", mkl), ("ONEDNN_MAX_CPU_ISA", onednn)]
}

/// Runs the PyTorch reference with `python` on `config`; `Ok(None)` when that Python has no torch.
pub fn run_torch(
    python: &str,
    script: &std::path::Path,
    config: &BenchConfig,
    steps: usize,
    threads: usize,
    device: &str,
) -> Result<Option<TorchResult>> {
    let probe = std::process::Command::new(python).args(["-c", "import torch"]).output();
    match probe {
        Ok(out) if out.status.success() => {}
        _ => return Ok(None),
    }
    let config_json = serde_json::to_string(config).map_err(|e| Error::Numeric(e.to_string()))?;
    let mut command = std::process::Command::new(python);
    if device == "cpu" {
        for (variable, value) in torch_simd_cap(crate::engine::simd::simd(), crate::engine::simd::detected_simd()) {
            // a user's own setting of PyTorch's variables stands
            if std::env::var_os(variable).is_none() {
                command.env(variable, value);
            }
        }
    }
    let output = command
        .arg(script)
        .args([
            "bench",
            "--config-json",
            &config_json,
            "--steps",
            &steps.to_string(),
            "--threads",
            &threads.to_string(),
            "--device",
            device,
        ])
        .output()
        .map_err(|e| Error::io(script, e))?;
    if !output.status.success() {
        return Err(Error::Numeric(format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .map(Some)
        .map_err(|e| Error::Numeric(format!("{}: unreadable output {last:?}: {e}", script.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pytorch_is_capped_only_where_ailla_is() {
        use crate::engine::simd::Simd;
        assert!(torch_simd_cap(Simd::Avx512, Simd::Avx512).is_empty());
        assert!(torch_simd_cap(Simd::Avx2, Simd::Avx2).is_empty(), "a CPU's own width is no cap");
        let capped = torch_simd_cap(Simd::Avx2, Simd::Avx512);
        let names: Vec<&str> = capped.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, ["ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA"]);
        assert!(capped.iter().all(|(_, value)| value.eq_ignore_ascii_case("avx2")), "{capped:?}");
        assert_eq!(torch_simd_cap(Simd::Baseline, Simd::Avx2).len(), 3);
    }
}
