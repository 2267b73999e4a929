//! The Mamba mixer (docs/spec.md §6.3 sequence, §6.4 decode step, §7.4 Jamba differences).
//!
//! Field names mirror the checkpoint keys under `…mixer.` (FalconMamba) or `…mamba.` (Jamba).

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use viper_checkpoint::{Result, Weights};

use crate::backend::{linear, ConvInput, RmsNormInput, ScanInput, SsmBackend, StepInput};
use crate::config::{MambaConfig, MambaVariant};
use crate::norm::RmsNorm;

/// Recurrent state of one mixer: everything a decode step needs from the past.
#[derive(Debug, Clone)]
pub struct MambaState<B: Backend> {
    /// The last `k` pre-conv inputs, `[b, k, i]`.
    pub conv: Tensor<B, 3>,
    /// The SSM state h, `[b, i, n]`.
    pub ssm: Tensor<B, 3>,
}

impl<B: Backend> MambaState<B> {
    /// The all-zero state a sequence starts from, in the given float dtype.
    pub fn zeros(config: &MambaConfig, batch: usize, dtype: burn::tensor::DType, device: &B::Device) -> Self {
        Self {
            conv: Tensor::zeros([batch, config.d_conv, config.d_inner], (device, dtype)),
            ssm: Tensor::zeros([batch, config.d_inner, config.d_state], (device, dtype)),
        }
    }

    /// Sequences in this state (its batch size).
    pub fn batch(&self) -> usize {
        self.conv.dims()[0]
    }

    /// The states of several batches as one, stacked along the batch dimension in order (a server
    /// steps many sequences together). Panics on an empty list.
    pub fn cat(states: Vec<Self>) -> Self {
        let (conv, ssm): (Vec<_>, Vec<_>) = states.into_iter().map(|s| (s.conv, s.ssm)).unzip();
        Self { conv: Tensor::cat(conv, 0), ssm: Tensor::cat(ssm, 0) }
    }

    /// The inverse of [`cat`](Self::cat): consecutive batches of `sizes` sequences (which must sum to
    /// [`batch`](Self::batch)).
    pub fn split(self, sizes: &[usize]) -> Vec<Self> {
        let mut start = 0;
        sizes
            .iter()
            .map(|&n| {
                let part =
                    Self { conv: self.conv.clone().narrow(0, start, n), ssm: self.ssm.clone().narrow(0, start, n) };
                start += n;
                part
            })
            .collect()
    }

    /// Elements held (conv window and SSM state), for sizing caches of states.
    pub fn num_elements(&self) -> usize {
        self.conv.shape().num_elements() + self.ssm.shape().num_elements()
    }
}

/// Learned dt/B/C norms of the Jamba variant.
#[derive(Module, Debug)]
pub struct DtBcNorms<B: Backend> {
    /// `dt_layernorm`, `[R]`.
    pub dt_layernorm: RmsNorm<B>,
    /// `b_layernorm`, `[N]`.
    pub b_layernorm: RmsNorm<B>,
    /// `c_layernorm`, `[N]`.
    pub c_layernorm: RmsNorm<B>,
}

/// One Mamba mixer.
#[derive(Module, Debug)]
pub struct MambaMixer<B: Backend> {
    /// `in_proj`: D_m → 2I, x branch then gate z.
    pub in_proj: Linear<B>,
    /// `conv1d.weight` squeezed to `[I, K]`.
    pub conv_weight: Param<Tensor<B, 2>>,
    /// `conv1d.bias`, `[I]`.
    pub conv_bias: Option<Param<Tensor<B, 1>>>,
    /// `x_proj`: I → R + 2N (dt, B, C).
    pub x_proj: Linear<B>,
    /// `dt_proj.weight` as a bias-free linear R → I; its bias is applied inside the scan.
    pub dt_proj: Linear<B>,
    /// `dt_proj.bias`, `[I]`.
    pub dt_bias: Param<Tensor<B, 1>>,
    /// `A_log`, `[I, N]`.
    pub a_log: Param<Tensor<B, 2>>,
    /// `D`, `[I]`.
    pub d: Param<Tensor<B, 1>>,
    /// `out_proj`: I → D_m.
    pub out_proj: Linear<B>,
    /// Jamba's learned dt/B/C norms (`None` for FalconMamba and plain Mamba).
    pub norms: Option<DtBcNorms<B>>,
    /// Shapes and variant.
    #[module(skip)]
    pub config: MambaConfig,
}

impl<B: SsmBackend> MambaMixer<B> {
    /// Loads a mixer from the view `w` (e.g. prefix `backbone.layers.0.mixer.`).
    pub fn load(config: &MambaConfig, w: &Weights, device: &B::Device) -> Result<Self> {
        let c = config;
        let conv = w.pp("conv1d");
        let conv_weight =
            conv.tensor::<B, 3>("weight", [c.d_inner, 1, c.d_conv], device)?.reshape([c.d_inner, c.d_conv]);
        let conv_bias =
            if c.conv_bias { Some(Param::from_tensor(conv.tensor("bias", [c.d_inner], device)?)) } else { None };
        let norms = match c.variant {
            MambaVariant::Jamba { rms_eps } => Some(DtBcNorms {
                dt_layernorm: RmsNorm::load(&w.pp("dt_layernorm"), c.dt_rank, rms_eps, device)?,
                b_layernorm: RmsNorm::load(&w.pp("b_layernorm"), c.d_state, rms_eps, device)?,
                c_layernorm: RmsNorm::load(&w.pp("c_layernorm"), c.d_state, rms_eps, device)?,
            }),
            _ => None,
        };
        Ok(Self {
            in_proj: w.linear("in_proj", c.d_model, 2 * c.d_inner, c.proj_bias, device)?,
            conv_weight: Param::from_tensor(conv_weight),
            conv_bias,
            x_proj: w.linear("x_proj", c.d_inner, c.dt_rank + 2 * c.d_state, false, device)?,
            dt_proj: w.linear("dt_proj", c.dt_rank, c.d_inner, false, device)?,
            dt_bias: Param::from_tensor(w.pp("dt_proj").tensor("bias", [c.d_inner], device)?),
            a_log: Param::from_tensor(w.tensor("A_log", [c.d_inner, c.d_state], device)?),
            d: Param::from_tensor(w.tensor("D", [c.d_inner], device)?),
            out_proj: w.linear("out_proj", c.d_inner, c.d_model, c.proj_bias, device)?,
            norms,
            config: config.clone(),
        })
    }

    /// A mixer with random, non-degenerate f32 weights (benchmarks and tests): A_log = log(1..=N) plus
    /// noise, dt bias giving Δ in [0.001, 0.1], unit-variance projections.
    pub fn random(config: &MambaConfig, device: &B::Device) -> Self {
        Self::random_as(config, burn::tensor::DType::F32, device)
    }

    /// [`random`](Self::random) with every weight in the float type `dtype`. The projections, conv taps, D
    /// and norm weights are drawn in `dtype` directly (no f32 copy of the large matrices); A_log and the dt
    /// bias are computed in f32 and cast.
    pub fn random_as(config: &MambaConfig, dtype: burn::tensor::DType, device: &B::Device) -> Self {
        use burn::tensor::{DType, Distribution, FloatDType};
        fn cast<B: Backend, const D: usize>(t: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
            if t.dtype() == dtype {
                t
            } else {
                t.cast(FloatDType::from(dtype))
            }
        }
        let c = config;
        let normal = |shape: [usize; 2], std: f64, dtype: DType| {
            Tensor::<B, 2>::random(shape, Distribution::Normal(0.0, std), (device, dtype))
        };
        let vec = |n: usize, lo: f64, hi: f64, dtype: DType| {
            Tensor::<B, 1>::random([n], Distribution::Uniform(lo, hi), (device, dtype))
        };
        // Linear weights are stored as PyTorch's [out, in], used transposed (see `Weights::linear`).
        let linear = |d_in: usize, d_out: usize| Linear {
            weight: Param::from_tensor(normal([d_out, d_in], (d_in as f64).powf(-0.5), dtype).transpose()),
            bias: None,
        };
        let n = cast(Tensor::<B, 1, Int>::arange(1..c.d_state as i64 + 1, device).float(), DType::F32).log();
        let a_log = n.unsqueeze::<2>().repeat_dim(0, c.d_inner) + normal([c.d_inner, c.d_state], 0.1, DType::F32);
        let dt = vec(c.d_inner, 0.001f64.ln(), 0.1f64.ln(), DType::F32).exp();
        let dt_bias = dt.clone() + (-(dt.neg().exp())).log1p(); // inverse softplus
        let norm = |d: usize, eps: f64| RmsNorm { weight: Param::from_tensor(vec(d, 0.8, 1.2, dtype)), eps };
        let norms = match c.variant {
            MambaVariant::Jamba { rms_eps } => Some(DtBcNorms {
                dt_layernorm: norm(c.dt_rank, rms_eps),
                b_layernorm: norm(c.d_state, rms_eps),
                c_layernorm: norm(c.d_state, rms_eps),
            }),
            _ => None,
        };
        Self {
            in_proj: linear(c.d_model, 2 * c.d_inner),
            conv_weight: Param::from_tensor(normal([c.d_inner, c.d_conv], 0.5, dtype)),
            conv_bias: c.conv_bias.then(|| Param::from_tensor(vec(c.d_inner, -0.2, 0.2, dtype))),
            x_proj: linear(c.d_inner, c.dt_rank + 2 * c.d_state),
            dt_proj: linear(c.dt_rank, c.d_inner),
            dt_bias: Param::from_tensor(cast(dt_bias, dtype)),
            a_log: Param::from_tensor(cast(a_log, dtype)),
            d: Param::from_tensor(vec(c.d_inner, 0.5, 1.5, dtype)),
            out_proj: linear(c.d_inner, c.d_model),
            norms,
            config: config.clone(),
        }
    }

    /// A zero state for `batch` sequences, in the dtype of this mixer's weights.
    pub fn zero_state(&self, batch: usize) -> MambaState<B> {
        let w = self.a_log.val();
        MambaState::zeros(&self.config, batch, w.dtype(), &w.device())
    }

    /// Runs the mixer over `x` (`[b, l, D_m]`), continuing from `state` (zeros if `None`); returns the
    /// output `[b, l, D_m]` and the state after the last token.
    pub fn forward(&self, x: Tensor<B, 3>, state: Option<MambaState<B>>) -> (Tensor<B, 3>, MambaState<B>) {
        self.run(x, state, false)
    }

    /// One decode step: `x` is `[b, D_m]`; returns `[b, D_m]` and the updated state.
    pub fn step(&self, x: Tensor<B, 2>, state: MambaState<B>) -> (Tensor<B, 2>, MambaState<B>) {
        let [b, dm] = x.dims();
        let (y, state) = self.run(x.reshape([b, 1, dm]), Some(state), true);
        (y.reshape([b, dm]), state)
    }

    fn run(&self, x: Tensor<B, 3>, state: Option<MambaState<B>>, single: bool) -> (Tensor<B, 3>, MambaState<B>) {
        let c = &self.config;
        let state = state.unwrap_or_else(|| self.zero_state(x.dims()[0]));

        // 1. in_proj, split into the x branch and the gate (first I channels are x).
        let xz = linear(&self.in_proj, x); // (b, l, 2I)
        let xs = xz.clone().narrow(2, 0, c.d_inner);
        let z = xz.narrow(2, c.d_inner, c.d_inner);

        // 2. causal depthwise conv + SiLU, carrying the window.
        let conv = ConvInput {
            x: xs,
            window: state.conv,
            weight: self.conv_weight.val(),
            bias: self.conv_bias.as_ref().map(|p| p.val()),
        };
        let (u, conv_state) = B::causal_conv1d(conv);

        // 3. x_proj → dt | B | C, normalised per variant.
        let dbc = linear(&self.x_proj, u.clone()); // (b, l, R + 2N)

        // FalconMamba's decode step: the dt/B/C norms, dt_proj and the scan step are one backend op.
        if let (true, None, None, MambaVariant::FalconMamba { rms_eps }) =
            (single, &self.norms, &self.dt_proj.bias, c.variant)
        {
            let out = B::selective_state_update_dbc(StepInput {
                u,
                dbc,
                eps: rms_eps,
                dt_proj: self.dt_proj.weight.val(),
                delta_bias: self.dt_bias.val(),
                a_log: self.a_log.val(),
                d: self.d.val(),
                z,
                state: state.ssm,
            });
            return (linear(&self.out_proj, out.y), MambaState { conv: conv_state, ssm: out.state });
        }
        let (r, n) = (c.dt_rank, c.d_state);
        let (dt, bm, cm) = match (&self.norms, c.variant) {
            (Some(nm), _) => (
                nm.dt_layernorm.forward(dbc.clone().narrow(2, 0, r)),
                nm.b_layernorm.forward(dbc.clone().narrow(2, r, n)),
                nm.c_layernorm.forward(dbc.narrow(2, r + n, n)),
            ),
            (None, MambaVariant::FalconMamba { rms_eps }) => {
                // FalconMamba's weightless norms of dt, B and C: one launch over the three segments,
                // each written as its own tensor.
                let dtype = dbc.dtype();
                let [dt, bm, cm] =
                    B::rms_norm_split(RmsNormInput { x: dbc, weight: None, eps: rms_eps, dtype, segments: [r, r + n] });
                (dt, bm, cm)
            }
            (None, _) => (dbc.clone().narrow(2, 0, r), dbc.clone().narrow(2, r, n), dbc.narrow(2, r + n, n)),
        };
        // The norms may promote to f32 (weight dtype ≠ activation dtype); dt_proj runs in the weight dtype.
        let dt = dt.cast(self.dt_proj.weight.val().dtype());

        // 4. selective scan with D skip and SiLU(z) gating; a decode step folds dt_proj into the scan.
        let scan = ScanInput {
            u,
            delta: dt,
            delta_bias: self.dt_bias.val(),
            a_log: self.a_log.val(),
            b: bm,
            c: cm,
            d: self.d.val(),
            z,
            state: state.ssm,
        };
        let out = match (&self.dt_proj.bias, single) {
            (None, true) => B::selective_state_update_projected(scan, self.dt_proj.weight.val()),
            _ => {
                let delta = linear(&self.dt_proj, scan.delta.clone()); // (b, l, I)
                B::selective_scan(ScanInput { delta, ..scan })
            }
        };
        (linear(&self.out_proj, out.y), MambaState { conv: conv_state, ssm: out.state })
    }
}
