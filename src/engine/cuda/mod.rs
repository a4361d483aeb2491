//! The optional CUDA backend (issue 24): what the GPU path needs that the CPU engine does not.
//!
//! The design is llm.c's: weights, activations, gradients and AdamW state stay on the device, every
//! product is one cuBLAS call and the rest are small kernels compiled at run time by NVRTC, so that only
//! the loss crosses PCIe each step. cudarc loads `libcuda`, `libcublas` and `libnvrtc` dynamically, so
//! the `cuda` feature builds and runs on machines without CUDA: there the [`probe`] says what is missing
//! and training stays on the CPU engine, whose numbers the GPU path never changes.
//!
//! Status: the probe, the device choice, the row-major → column-major product mapping ([`gemm`]), the
//! kernel sources ([`kernels`]) and the device step ([`step`], with and without rules, on the host device
//! of [`host`]) are tested without a GPU; the GPU device ([`device`]) and the kernels themselves have not run on hardware yet.

pub mod batch_rules;
#[cfg(feature = "cuda")]
pub mod device;
pub mod gemm;
pub mod host;
pub mod kernels;
pub mod layout;
pub mod ops;
pub mod parity;
pub mod resident;
pub mod step;
#[cfg(test)]
mod step_tests;

use std::fmt;

/// Where a training step runs, as `--device` and a pipeline's `train.device` name it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// The CPU engine.
    #[default]
    Cpu,
    /// An NVIDIA GPU; an error when the probe finds none.
    Cuda,
    /// The GPU when the probe finds one, else the CPU.
    Auto,
}

impl DeviceChoice {
    pub fn is_cpu(&self) -> bool {
        *self == DeviceChoice::Cpu
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "cpu" => Some(DeviceChoice::Cpu),
            "cuda" => Some(DeviceChoice::Cuda),
            "auto" => Some(DeviceChoice::Auto),
            _ => None,
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Cuda => "cuda",
            DeviceChoice::Auto => "auto",
        })
    }
}

/// What the probe found: each library cudarc needs, then the devices the driver reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Probe {
    /// Whether this binary was built with the `cuda` feature.
    pub built_with_cuda: bool,
    /// `libcuda` (the driver) could be loaded.
    pub driver: bool,
    /// `libcublas` could be loaded.
    pub cublas: bool,
    /// `libnvrtc` could be loaded.
    pub nvrtc: bool,
    /// Devices the driver reports; 0 when the driver is missing or fails to initialise.
    pub devices: usize,
    /// The driver's error when initialising or counting devices failed.
    pub driver_error: Option<String>,
}

impl Probe {
    /// Whether a training step can run on the GPU.
    pub fn usable(&self) -> bool {
        self.built_with_cuda && self.driver && self.cublas && self.nvrtc && self.devices > 0
    }

    /// What is missing, in words; empty when [`usable`](Self::usable).
    pub fn missing(&self) -> Vec<String> {
        if !self.built_with_cuda {
            return vec!["this ailla was built without the `cuda` feature".into()];
        }
        let mut missing = Vec::new();
        for (present, name) in
            [(self.driver, "libcuda (the NVIDIA driver)"), (self.cublas, "libcublas"), (self.nvrtc, "libnvrtc")]
        {
            if !present {
                missing.push(format!("{name} not found on the library path"));
            }
        }
        if self.driver && self.devices == 0 {
            missing.push(match &self.driver_error {
                Some(error) => format!("the driver reports no device ({error})"),
                None => "the driver reports no device".into(),
            });
        }
        missing
    }

    /// One line for `ailla env`.
    pub fn summary(&self) -> String {
        if self.usable() {
            return format!("{} device(s); driver, cuBLAS and NVRTC found", self.devices);
        }
        format!("none: {}", self.missing().join("; "))
    }
}

/// Looks for the CUDA libraries and devices without ever panicking: cudarc panics when a library is
/// absent at its first call, so each library is tried with `is_culib_present` first and the driver is
/// asked for devices only when it loaded.
pub fn probe() -> Probe {
    #[cfg(feature = "cuda")]
    {
        // SAFETY: `is_culib_present` only tries to dlopen the library names cudarc knows and closes them.
        let (driver, cublas, nvrtc) = unsafe {
            (
                cudarc::driver::sys::is_culib_present(),
                cudarc::cublas::sys::is_culib_present(),
                cudarc::nvrtc::sys::is_culib_present(),
            )
        };
        let (devices, driver_error) = if driver {
            match cudarc::driver::CudaContext::device_count() {
                Ok(count) => (usize::try_from(count).unwrap_or(0), None),
                Err(error) => (0, Some(format!("{error:?}"))),
            }
        } else {
            (0, None)
        };
        Probe { built_with_cuda: true, driver, cublas, nvrtc, devices, driver_error }
    }
    #[cfg(not(feature = "cuda"))]
    {
        Probe { built_with_cuda: false, driver: false, cublas: false, nvrtc: false, devices: 0, driver_error: None }
    }
}

/// Where a step with `choice` runs, given what the probe found: `Ok(true)` for the GPU. `Err` carries the
/// message for `--device cuda` when no GPU is usable.
pub fn resolve(choice: DeviceChoice, probe: &Probe) -> Result<bool, String> {
    match choice {
        DeviceChoice::Cpu => Ok(false),
        DeviceChoice::Auto => Ok(probe.usable()),
        DeviceChoice::Cuda if probe.usable() => Ok(true),
        DeviceChoice::Cuda => Err(format!("no usable CUDA GPU: {}", probe.missing().join("; "))),
    }
}

/// Checks `choice` against the probe before any work starts: `Ok(true)` to train on the GPU, `Ok(false)`
/// on the CPU, `Err` with the reason when `cuda` was asked for and cannot be had.
pub fn select(choice: DeviceChoice) -> Result<bool, String> {
    if choice == DeviceChoice::Cpu {
        return Ok(false);
    }
    resolve(choice, &probe())
}

/// Where a training run's steps go, decided before the run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StepDevice {
    /// The CPU engine.
    #[default]
    Cpu,
    /// The device step on GPU 0. `required` (from `--device cuda`) makes a run the step does not cover
    /// (rules, copy paths, recruited blocks) an error; otherwise (`auto`) such a run trains on the CPU.
    Gpu { required: bool },
    /// The device step on the host device: the GPU path's orchestration, checkpoints and sync points,
    /// run on the CPU where there is no GPU (tests).
    Host,
}

impl StepDevice {
    /// The device a resolved `choice` trains on (`gpu` from [`select`]).
    pub fn of(choice: DeviceChoice, gpu: bool) -> Self {
        if gpu {
            StepDevice::Gpu { required: choice == DeviceChoice::Cuda }
        } else {
            StepDevice::Cpu
        }
    }

    /// Whether a run the step cannot take must fail rather than train on the CPU.
    pub fn required(&self) -> bool {
        matches!(self, StepDevice::Gpu { required: true } | StepDevice::Host)
    }
}

/// Puts `model` on `device` for batches of `batch × seq_len`; `Ok(None)` for the CPU engine.
pub fn open_step(
    device: StepDevice,
    model: &crate::engine::Model<f32>,
    batch: usize,
    seq_len: usize,
) -> Result<Option<Box<dyn step::ResidentStep>>, String> {
    match device {
        StepDevice::Cpu => Ok(None),
        StepDevice::Host => Ok(Some(Box::new(step::DeviceModel::new(host::HostDevice::new(), model, batch, seq_len)?))),
        #[cfg(feature = "cuda")]
        StepDevice::Gpu { .. } => {
            Ok(Some(Box::new(step::DeviceModel::new(device::Gpu::new(0)?, model, batch, seq_len)?)))
        }
        #[cfg(not(feature = "cuda"))]
        StepDevice::Gpu { .. } => Err("this ailla was built without the `cuda` feature".into()),
    }
}

/// Whether GPU tests must fail rather than skip (`AILLA_REQUIRE_GPU=1`, for a machine known to have one).
pub fn gpu_required() -> bool {
    std::env::var("AILLA_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_never_panics_and_explains_what_is_missing() {
        let probe = probe();
        if probe.usable() {
            assert!(probe.missing().is_empty());
            assert_eq!(resolve(DeviceChoice::Cuda, &probe), Ok(true));
        } else {
            assert!(!gpu_required(), "AILLA_REQUIRE_GPU=1 but the probe found: {}", probe.summary());
            eprintln!("GPU tests skipped: {}", probe.summary());
            assert!(!probe.missing().is_empty());
            assert_eq!(resolve(DeviceChoice::Auto, &probe), Ok(false));
            let error = resolve(DeviceChoice::Cuda, &probe).unwrap_err();
            assert!(error.contains("no usable CUDA GPU"), "{error}");
        }
        assert_eq!(resolve(DeviceChoice::Cpu, &probe), Ok(false));
    }

    #[test]
    fn device_choices_parse_and_print_alike() {
        for choice in [DeviceChoice::Cpu, DeviceChoice::Cuda, DeviceChoice::Auto] {
            assert_eq!(DeviceChoice::parse(&choice.to_string()), Some(choice));
        }
        assert_eq!(DeviceChoice::parse("gpu"), None);
    }
}
