//! The device step as the training loop holds it: one object whichever the device, so that the loop
//! names no device type.

use super::ops::{Device, DeviceResult};
use super::step::{BatchLoss, BatchRules, DeviceModel};
use crate::engine::optim::{AdamW, OptimConfig};
use crate::engine::Model;

/// The device step as the training loop holds it, whichever the device.
pub trait ResidentStep {
    fn describe(&self) -> String;
    /// Loss and gradients of one batch (`batch × seq_len` tokens) under its rules, if any.
    fn loss_and_grads(
        &mut self,
        tokens: &[u32],
        targets: &[u32],
        rules: Option<&BatchRules>,
    ) -> DeviceResult<BatchLoss>;
    /// AdamW from the gradients of the last [`loss_and_grads`](Self::loss_and_grads); the norm before
    /// clipping.
    fn update(&mut self, optim: &OptimConfig, lr: f64) -> DeviceResult<f64>;
    fn sync_to_host(&mut self, model: &mut Model<f32>, optimizer: &mut AdamW<f32>) -> DeviceResult<()>;
    fn load_optimizer(&mut self, optimizer: &AdamW<f32>) -> DeviceResult<()>;
}

impl<D: Device> ResidentStep for DeviceModel<D> {
    fn describe(&self) -> String {
        self.device().describe()
    }

    fn loss_and_grads(
        &mut self,
        tokens: &[u32],
        targets: &[u32],
        rules: Option<&BatchRules>,
    ) -> DeviceResult<BatchLoss> {
        DeviceModel::loss_and_grads(self, tokens, targets, rules)
    }

    fn update(&mut self, optim: &OptimConfig, lr: f64) -> DeviceResult<f64> {
        DeviceModel::update(self, optim, lr)
    }

    fn sync_to_host(&mut self, model: &mut Model<f32>, optimizer: &mut AdamW<f32>) -> DeviceResult<()> {
        DeviceModel::sync_to_host(self, model, optimizer)
    }

    fn load_optimizer(&mut self, optimizer: &AdamW<f32>) -> DeviceResult<()> {
        DeviceModel::load_optimizer(self, optimizer)
    }
}
