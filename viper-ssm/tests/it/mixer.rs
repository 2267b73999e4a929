//! The mixer's sequence path and its recurrent path agree (outputs and final state), from zero and
//! non-zero states, for both variants and odd sizes.

use burn::backend::NdArray;
use burn::prelude::*;
use burn::tensor::Distribution;
use viper_ssm::{MambaConfig, MambaMixer, MambaState, MambaVariant};

type B = NdArray;

/// Tests that seed NdArray's process-wide generator and draw from it hold this, so that a parallel test
/// does not draw between another's seed and its draws.
fn seeded() -> std::sync::MutexGuard<'static, ()> {
    static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn rel_err(a: Tensor<B, 3>, b: Tensor<B, 3>) -> f32 {
    let num = (a - b.clone()).abs().max().into_scalar();
    let den = b.abs().max().into_scalar();
    assert!(den > 0.0, "degenerate comparison");
    num / den
}

fn config(variant: MambaVariant) -> MambaConfig {
    MambaConfig {
        d_model: 24,
        d_inner: 36,
        d_state: 7,
        d_conv: 4,
        dt_rank: 3,
        conv_bias: true,
        proj_bias: false,
        variant,
    }
}

fn random_state(m: &MambaMixer<B>, batch: usize) -> MambaState<B> {
    let c = &m.config;
    let dev = Default::default();
    MambaState {
        conv: Tensor::random([batch, c.d_conv, c.d_inner], Distribution::Normal(0.0, 1.0), &dev),
        ssm: Tensor::random([batch, c.d_inner, c.d_state], Distribution::Normal(0.0, 1.0), &dev),
    }
}

fn check(variant: MambaVariant, seed: u64) {
    let _rng = seeded();
    B::seed(&Default::default(), seed);
    let m = MambaMixer::<B>::random(&config(variant), &Default::default());
    let (b, l) = (3, 13);
    let x = Tensor::<B, 3>::random([b, l, 24], Distribution::Normal(0.0, 1.0), &Default::default());
    for initial in [m.zero_state(b), random_state(&m, b)] {
        let (seq, seq_state) = m.forward(x.clone(), Some(initial.clone()));
        assert!(seq.clone().abs().max().into_scalar() > 1e-3, "output is degenerate");

        let mut state = initial.clone();
        let mut outs = Vec::new();
        for t in 0..l {
            let (y, s) = m.step(x.clone().narrow(1, t, 1).reshape([b, 24]), state);
            outs.push(y.unsqueeze_dim::<3>(1));
            state = s;
        }
        let stepped = Tensor::cat(outs, 1);
        assert!(rel_err(stepped, seq.clone()) < 1e-5, "{variant:?}: step outputs differ");
        assert!(rel_err(state.ssm.clone(), seq_state.ssm.clone()) < 1e-5, "{variant:?}: final ssm state differs");
        assert!(rel_err(state.conv, seq_state.conv.clone()) < 1e-6, "{variant:?}: final conv window differs");

        // Shorter than the conv window, then the rest: the window carries over.
        let (a, s1) = m.forward(x.clone().narrow(1, 0, 2), Some(initial.clone()));
        let (rest, s2) = m.forward(x.clone().narrow(1, 2, l - 2), Some(s1));
        assert!(rel_err(Tensor::cat(vec![a, rest], 1), seq) < 1e-5, "{variant:?}: split forward differs");
        assert!(rel_err(s2.ssm, seq_state.ssm) < 1e-5);
    }
}

#[test]
fn falcon_mamba_forward_equals_step() {
    check(MambaVariant::FalconMamba { rms_eps: 1e-6 }, 1);
}

#[test]
fn jamba_forward_equals_step() {
    check(MambaVariant::Jamba { rms_eps: 1e-6 }, 2);
}

#[test]
fn plain_mamba_forward_equals_step() {
    check(MambaVariant::Mamba, 3);
}

#[test]
fn batch_rows_are_independent() {
    let _rng = seeded();
    B::seed(&Default::default(), 4);
    let m = MambaMixer::<B>::random(&config(MambaVariant::FalconMamba { rms_eps: 1e-6 }), &Default::default());
    let x = Tensor::<B, 3>::random([2, 9, 24], Distribution::Normal(0.0, 1.0), &Default::default());
    let (both, _) = m.forward(x.clone(), None);
    let (second, _) = m.forward(x.narrow(0, 1, 1), None);
    assert!(rel_err(both.narrow(0, 1, 1), second) < 1e-6);
}

/// A server's batched decode: states of separate sequences stacked with `MambaState::cat`, stepped
/// once, split back, give what each sequence's own step gives.
#[test]
fn a_batched_step_equals_the_steps_alone() {
    let _rng = seeded();
    for variant in [MambaVariant::FalconMamba { rms_eps: 1e-6 }, MambaVariant::Jamba { rms_eps: 1e-6 }] {
        B::seed(&Default::default(), 5);
        let m = MambaMixer::<B>::random(&config(variant), &Default::default());
        let states: Vec<MambaState<B>> = (0..3).map(|_| random_state(&m, 1)).collect();
        let x = Tensor::<B, 2>::random([3, 24], Distribution::Normal(0.0, 1.0), &Default::default());
        let (y, state) = m.step(x.clone(), MambaState::cat(states.clone()));
        assert_eq!(state.batch(), 3);
        let parts = state.split(&[1, 1, 1]);
        for (i, (alone, part)) in states.into_iter().zip(parts).enumerate() {
            let (y1, s1) = m.step(x.clone().narrow(0, i, 1), alone);
            let y_i = y.clone().narrow(0, i, 1);
            assert!(rel_err(y_i.unsqueeze(), y1.unsqueeze()) < 1e-6, "{variant:?} output {i}");
            assert!(rel_err(part.ssm, s1.ssm) < 1e-6, "{variant:?} ssm state {i}");
            assert!(rel_err(part.conv, s1.conv) < 1e-6, "{variant:?} conv state {i}");
        }
    }
}

#[test]
fn invalid_configs_are_rejected() {
    let mut c = config(MambaVariant::FalconMamba { rms_eps: 1e-6 });
    assert!(c.validate().is_ok());
    c.d_state = 0;
    assert!(c.validate().unwrap_err().to_string().contains("state_size"));
    let mut c = config(MambaVariant::Jamba { rms_eps: -1.0 });
    assert!(c.validate().is_err());
    c.variant = MambaVariant::Mamba;
    c.d_conv = 1;
    assert!(c.validate().unwrap_err().to_string().contains("conv kernel"));
}

#[test]
fn random_as_gives_every_weight_the_dtype() {
    let _rng = seeded();
    use burn::tensor::DType;
    let dev = Default::default();
    let c = config(MambaVariant::Jamba { rms_eps: 1e-6 });
    // `random` is `random_as` in f32: the same draws, in the same order.
    B::seed(&dev, 5);
    let a = MambaMixer::<B>::random(&c, &dev);
    B::seed(&dev, 5);
    let b = MambaMixer::<B>::random_as(&c, DType::F32, &dev);
    assert_eq!(a.in_proj.weight.val().into_data(), b.in_proj.weight.val().into_data());
    assert_eq!(a.a_log.val().into_data(), b.a_log.val().into_data());
    assert_eq!(a.dt_bias.val().into_data(), b.dt_bias.val().into_data());

    let m = MambaMixer::<B>::random_as(&c, DType::F64, &dev);
    let norms = m.norms.as_ref().expect("Jamba norms");
    let dtypes = [
        m.in_proj.weight.val().dtype(),
        m.conv_weight.val().dtype(),
        m.conv_bias.as_ref().expect("conv bias").val().dtype(),
        m.x_proj.weight.val().dtype(),
        m.dt_proj.weight.val().dtype(),
        m.dt_bias.val().dtype(),
        m.a_log.val().dtype(),
        m.d.val().dtype(),
        m.out_proj.weight.val().dtype(),
        norms.dt_layernorm.weight.val().dtype(),
        norms.b_layernorm.weight.val().dtype(),
        norms.c_layernorm.weight.val().dtype(),
    ];
    assert!(dtypes.iter().all(|&d| d == DType::F64), "{dtypes:?}");
    // The dt bias is still an inverse softplus of Δ in [0.001, 0.1].
    let delta = m.dt_bias.val().exp().log1p();
    let (lo, hi) = (delta.clone().min().into_scalar(), delta.max().into_scalar());
    assert!(lo >= 0.00099 && hi <= 0.1001, "Δ in [{lo}, {hi}]");
}
