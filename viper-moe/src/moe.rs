//! Jamba feed-forwards (docs/spec.md §7.5): the SiLU-gated MLP and the sparse mixture of experts. Every
//! product (router, gate/up/down of the dense MLP and of each expert) goes through [`viper_ssm::linear`].

use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{FloatDType, IndexingUpdateOp};
use viper_checkpoint::{Result, Weights};
use viper_ssm::{linear, SsmBackend};

/// `down_proj(silu(gate_proj(x)) ⊙ up_proj(x))`, no biases: the dense layer and each expert.
#[derive(Module, Debug)]
pub struct JambaMlp<B: Backend> {
    /// H → F.
    pub gate_proj: Linear<B>,
    /// H → F.
    pub up_proj: Linear<B>,
    /// F → H.
    pub down_proj: Linear<B>,
}

/// `layer` on the rows of `x` (`[…, d_in]`, leading dims flattened into `[1, rows, d_in]`) through
/// [`viper_ssm::linear`].
fn rows<B: SsmBackend, const D: usize>(layer: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    let mut dims = x.dims();
    let (rows, d_in) = (dims[..D - 1].iter().product(), dims[D - 1]);
    dims[D - 1] = layer.weight.dims()[1];
    linear(layer, x.reshape([1, rows, d_in])).reshape(dims)
}

impl<B: SsmBackend> JambaMlp<B> {
    /// Loads `{gate,up,down}_proj` under `w`.
    pub fn load(w: &Weights, hidden: usize, ffn: usize, device: &B::Device) -> Result<Self> {
        Ok(Self {
            gate_proj: w.linear("gate_proj", hidden, ffn, false, device)?,
            up_proj: w.linear("up_proj", hidden, ffn, false, device)?,
            down_proj: w.linear("down_proj", ffn, hidden, false, device)?,
        })
    }

    /// Applies the MLP to `[…, H]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        rows(&self.down_proj, silu(rows(&self.gate_proj, x.clone())) * rows(&self.up_proj, x))
    }
}

/// `feed_forward.{router, experts.{e}}`: each token goes to its top-k experts.
#[derive(Module, Debug)]
pub struct SparseMoe<B: Backend> {
    /// H → E, no bias.
    pub router: Linear<B>,
    /// The experts.
    pub experts: Vec<JambaMlp<B>>,
    /// Experts per token.
    #[module(skip)]
    pub top_k: usize,
}

impl<B: SsmBackend> SparseMoe<B> {
    /// Loads the router and `num_experts` experts under `w`.
    pub fn load(
        w: &Weights,
        hidden: usize,
        ffn: usize,
        num_experts: usize,
        top_k: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let experts = (0..num_experts)
            .map(|e| JambaMlp::load(&w.pp(format_args!("experts.{e}")), hidden, ffn, device))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { router: w.linear("router", hidden, num_experts, false, device)?, experts, top_k })
    }

    /// Routes `x` (`[b, l, H]`): softmax over all experts in f32, top-k **without renormalising**,
    /// then each expert runs only on its tokens and adds its weighted output, in expert order.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, l, h] = x.dims();
        let n = b * l;
        let flat = x.reshape([n, h]);
        let probs = softmax(rows(&self.router, flat.clone()).cast(FloatDType::F32), 1);
        let (weights, experts) = probs.topk_with_indices(self.top_k, 1); // (n, k)
        let weights = weights.cast(flat.dtype());
        // The dispatch plan lives on the host: one small read of n·k ids per layer.
        let ids: Vec<i64> = experts.into_data().convert::<i64>().to_vec().unwrap_or_default();
        let mut out = Tensor::zeros([n, h], (&flat.device(), flat.dtype()));
        for (e, expert) in self.experts.iter().enumerate() {
            // (token, slot) pairs routed to expert e, in token order.
            let (tokens, slots): (Vec<i64>, Vec<i64>) = ids
                .iter()
                .enumerate()
                .filter(|(_, &id)| id == e as i64)
                .map(|(pos, _)| ((pos / self.top_k) as i64, (pos % self.top_k) as i64))
                .unzip();
            if tokens.is_empty() {
                continue;
            }
            let device = flat.device();
            let m = tokens.len();
            let tokens = Tensor::<B, 1, Int>::from_data(TensorData::new(tokens, [m]), &device);
            let flat_pos = tokens.clone() * self.top_k as i64
                + Tensor::<B, 1, Int>::from_data(TensorData::new(slots, [m]), &device);
            let w = weights.clone().reshape([n * self.top_k, 1]).select(0, flat_pos); // (m, 1)
            let y = expert.forward(flat.clone().select(0, tokens.clone())) * w;
            out = out.select_assign(0, tokens, y, IndexingUpdateOp::Add);
        }
        out.reshape([b, l, h])
    }
}
