//! Jamba feed-forwards (docs/spec.md §7.5): the SiLU-gated MLP and the sparse mixture of experts. Every
//! product of the router, the dense MLP and the prefill's expert groups goes through [`viper_ssm::linear`];
//! the decode step's expert products are batched matrix–vector products over matrices gathered by id.

use burn::module::Param;
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

/// Tokens (`b · l`) up to which [`SparseMoe::forward`] takes the device-routed path: each (token, slot)
/// gathers its expert's matrices by id, so the transient copy grows with the token count; above it, tokens
/// are grouped by expert (one host read of the group sizes per layer).
pub const ROUTED_MAX_TOKENS: usize = 2;

/// `feed_forward.{router, experts.{e}}`: each token goes to its top-k experts.
///
/// The experts' matrices are stacked at load, expert-major, each in PyTorch's `[d_out, d_in]` layout, so
/// that a decode step can select its experts by id on the device; [`expert`](Self::expert) gives one
/// expert's [`JambaMlp`] as views of them.
#[derive(Module, Debug)]
pub struct SparseMoe<B: Backend> {
    /// H → E, no bias.
    pub router: Linear<B>,
    /// `experts.{e}.gate_proj.weight` stacked, `[E, F, H]`.
    pub gate_proj: Param<Tensor<B, 3>>,
    /// `experts.{e}.up_proj.weight` stacked, `[E, F, H]`.
    pub up_proj: Param<Tensor<B, 3>>,
    /// `experts.{e}.down_proj.weight` stacked, `[E, H, F]`.
    pub down_proj: Param<Tensor<B, 3>>,
    /// Experts per token.
    #[module(skip)]
    pub top_k: usize,
}

/// Stacks `experts.{e}.{name}.weight` (`[d_out, d_in]` each) into `[E, d_out, d_in]`, one expert at a time
/// into a preallocated tensor: the loader converts one expert on the host, and the device never holds the
/// layer's experts twice.
fn stacked<B: Backend>(
    w: &Weights,
    name: &str,
    num_experts: usize,
    [d_out, d_in]: [usize; 2],
    device: &B::Device,
) -> Result<Param<Tensor<B, 3>>> {
    let mut all: Option<Tensor<B, 3>> = None;
    for e in 0..num_experts {
        let t = w.pp(format_args!("experts.{e}")).pp(name).tensor::<B, 2>("weight", [d_out, d_in], device)?;
        // Taken, not cloned: the only handle, so `slice_assign` may write in place.
        let buf = all.take().unwrap_or_else(|| Tensor::zeros([num_experts, d_out, d_in], (device, t.dtype())));
        all = Some(buf.slice_assign([e..e + 1, 0..d_out, 0..d_in], t.unsqueeze_dim(0)));
    }
    let all = all.unwrap_or_else(|| Tensor::zeros([0, d_out, d_in], device));
    Ok(Param::from_tensor(all))
}

/// `x` (`[m, d_in]`) times the transpose of `weights[ids[r]]` (`[E, d_out, d_in]`) for each row `r`: the
/// selected matrices are gathered on the device, then one batched product; `[m, d_out]`.
fn gathered<B: Backend>(x: Tensor<B, 2>, weights: Tensor<B, 3>, ids: Tensor<B, 1, Int>) -> Tensor<B, 2> {
    let [m, d_in] = x.dims();
    let w = weights.select(0, ids).swap_dims(1, 2); // (m, d_in, d_out)
    let d_out = w.dims()[2];
    x.reshape([m, 1, d_in]).matmul(w).reshape([m, d_out])
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
        Ok(Self {
            router: w.linear("router", hidden, num_experts, false, device)?,
            gate_proj: stacked(w, "gate_proj", num_experts, [ffn, hidden], device)?,
            up_proj: stacked(w, "up_proj", num_experts, [ffn, hidden], device)?,
            down_proj: stacked(w, "down_proj", num_experts, [hidden, ffn], device)?,
            top_k,
        })
    }

    /// Number of experts E.
    pub fn num_experts(&self) -> usize {
        self.gate_proj.dims()[0]
    }

    /// Expert `e` as a [`JambaMlp`] whose weights are views of the stacked matrices (no copy), laid out
    /// as the loader lays out a Linear (the transpose of `[d_out, d_in]`).
    pub fn expert(&self, e: usize) -> JambaMlp<B> {
        let view = |p: &Param<Tensor<B, 3>>| {
            let [_, d_out, d_in] = p.dims();
            Linear {
                weight: Param::from_tensor(p.val().narrow(0, e, 1).reshape([d_out, d_in]).transpose()),
                bias: None,
            }
        };
        JambaMlp { gate_proj: view(&self.gate_proj), up_proj: view(&self.up_proj), down_proj: view(&self.down_proj) }
    }

    /// The routing of `flat` (`[n, H]`, docs/spec.md §7.5): softmax over all experts in f32, top-k
    /// **without renormalising**, then each token's slots reordered by expert id so that outputs are
    /// summed in expert order. Returns the weights (`[n, k]`, in `flat`'s dtype) and the ids (`[n, k]`).
    pub fn route(&self, flat: Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, 2, Int>) {
        let probs = softmax(rows(&self.router, flat.clone()).cast(FloatDType::F32), 1);
        let (weights, ids) = probs.topk_with_indices(self.top_k, 1); // (n, k), descending
        let (ids, order) = ids.sort_with_indices(1);
        (weights.gather(1, order).cast(flat.dtype()), ids)
    }

    /// Routes `x` (`[b, l, H]`) and sums each token's weighted expert outputs in expert order
    /// (docs/spec.md §7.5). Up to [`ROUTED_MAX_TOKENS`] tokens, [`forward_routed`](Self::forward_routed);
    /// above, [`forward_grouped`](Self::forward_grouped).
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, l, _] = x.dims();
        if b * l <= ROUTED_MAX_TOKENS {
            self.forward_routed(x)
        } else {
            self.forward_grouped(x)
        }
    }

    /// The decode path: no host read. Each (token, slot) gathers its expert's matrices by id on the device
    /// and runs the gated MLP as batched matrix–vector products; the k weighted outputs are then added
    /// slot by slot, in expert order, each add rounded to the model dtype as the reference's buffer is.
    pub fn forward_routed(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, l, h] = x.dims();
        let (n, k) = (b * l, self.top_k);
        let flat = x.reshape([n, h]);
        let (weights, ids) = self.route(flat.clone());
        let ids = ids.reshape([n * k]);
        let xs = flat.unsqueeze_dim::<3>(1).expand([n, k, h]).reshape([n * k, h]);
        let gate = gathered(xs.clone(), self.gate_proj.val(), ids.clone());
        let up = gathered(xs, self.up_proj.val(), ids.clone());
        let y = gathered(silu(gate) * up, self.down_proj.val(), ids) * weights.reshape([n * k, 1]);
        let y = y.reshape([n, k, h]);
        let mut out = y.clone().narrow(1, 0, 1);
        for j in 1..k {
            out = out + y.clone().narrow(1, j, 1);
        }
        out.reshape([b, l, h])
    }

    /// The prefill path: (token, slot) pairs sorted by expert id on the device; the group sizes are read
    /// to the host (E integers, one read per layer) to size one product per non-empty expert through
    /// [`viper_ssm::linear`]; each group's weighted output is added into a zero buffer, expert by expert.
    pub fn forward_grouped(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, l, h] = x.dims();
        let (n, k, num) = (b * l, self.top_k, self.num_experts());
        let flat = x.reshape([n, h]);
        let device = flat.device();
        let (weights, ids) = self.route(flat.clone());
        let ids = ids.reshape([n * k]);
        let weights = weights.reshape([n * k, 1]);
        let (_, order) = ids.clone().sort_with_indices(0); // slot positions grouped by expert
        let experts = Tensor::<B, 1, Int>::arange(0..num as i64, &device).reshape([1, num]);
        let counts = ids.reshape([n * k, 1]).equal(experts).int().sum_dim(0).reshape([num]);
        let counts: Vec<i64> = counts.into_data().convert::<i64>().to_vec().unwrap_or_default();
        let mut out = Tensor::zeros([n, h], (&device, flat.dtype()));
        let mut start = 0;
        for (e, &count) in counts.iter().enumerate() {
            let count = count as usize;
            if count == 0 {
                continue;
            }
            let pos = order.clone().narrow(0, start, count);
            start += count;
            let tokens = pos.clone().div_scalar(k as i64);
            let y = self.expert(e).forward(flat.clone().select(0, tokens.clone())) * weights.clone().select(0, pos);
            out = out.select_assign(0, tokens, y, IndexingUpdateOp::Add);
        }
        out.reshape([b, l, h])
    }
}
