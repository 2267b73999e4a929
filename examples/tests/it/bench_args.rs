//! The benchmark binaries' command lines (parsed here without a GPU backend): every measurement mode
//! is a subcommand, and the options keep their old names and defaults.

use std::path::PathBuf;

use clap::{CommandFactory, Parser};
use viper_examples::bench_args::{BenchArgs, BenchCommand, BenchModelsArgs, BenchModelsCommand, ModelArgs};

fn bench(args: &[&str]) -> BenchArgs {
    BenchArgs::try_parse_from(std::iter::once("bench").chain(args.iter().copied())).unwrap()
}

fn models(layers: usize, quick: bool, steps: Option<usize>, dynamic_pools: bool) -> ModelArgs {
    ModelArgs { layers, quick, steps, dynamic_pools }
}

#[test]
fn definitions_are_consistent() {
    BenchArgs::command().debug_assert();
    BenchModelsArgs::command().debug_assert();
}

#[test]
fn every_bench_mode_is_a_subcommand() {
    let b = bench(&["all"]);
    assert_eq!((b.out, b.json), (PathBuf::from("BENCHMARKS.md"), None));
    assert_eq!(b.command, BenchCommand::All(models(64, false, None, false)));
    let b = bench(&["all", "--quick", "--layers", "4", "--out", "r.md", "--json", "r.json", "--dynamic-pools"]);
    assert_eq!((b.out, b.json), (PathBuf::from("r.md"), Some(PathBuf::from("r.json"))));
    assert_eq!(b.command, BenchCommand::All(models(4, true, None, true)));
    assert_eq!(bench(&["--out", "k.md", "kernels", "--quick"]).out, PathBuf::from("k.md"));
    assert_eq!(bench(&["kernels"]).command, BenchCommand::Kernels { quick: false });
    assert_eq!(
        bench(&["decode", "--layers", "4", "--steps", "32"]).command,
        BenchCommand::Decode(models(4, false, Some(32), false))
    );
    assert_eq!(
        bench(&["prefill", "--length", "2048", "--layers", "4"]).command,
        BenchCommand::Prefill { length: 2048, layers: 4 }
    );
    assert_eq!(bench(&["host-ops"]).command, BenchCommand::HostOps);
    assert_eq!(bench(&["matmul"]).command, BenchCommand::Matmul);
    assert_eq!(bench(&["matmul-sweep"]).command, BenchCommand::MatmulSweep { only: vec![] });
    assert_eq!(
        bench(&["matmul-sweep", "--only", "specialized_tma,ordered"]).command,
        BenchCommand::MatmulSweep { only: vec!["specialized_tma".into(), "ordered".into()] }
    );
    assert_eq!(bench(&["cublas"]).command, BenchCommand::Cublas);
    assert_eq!(
        bench(&["profile-host", "--steps", "200"]).command,
        BenchCommand::ProfileHost { steps: 200, layers: 64 }
    );
}

#[test]
fn decode_steps_default_as_before() {
    assert_eq!(models(64, false, None, false).decode_steps(), 64);
    assert_eq!(models(64, true, None, false).decode_steps(), 16);
    assert_eq!(models(64, true, Some(5), false).decode_steps(), 5);
}

#[test]
fn old_flags_and_missing_arguments_are_rejected() {
    for args in [&[][..], &["--decode-only"], &["--matmul-sweep"], &["prefill"], &["profile-host"], &["host-ops", "x"]]
    {
        let argv = std::iter::once("bench").chain(args.iter().copied());
        assert!(BenchArgs::try_parse_from(argv).is_err(), "{args:?} should not parse");
    }
}

#[test]
fn bench_models_subcommands() {
    let parse = |args: &[&str]| {
        BenchModelsArgs::try_parse_from(std::iter::once("bench_models").chain(args.iter().copied())).unwrap()
    };
    let a = parse(&["all"]);
    assert_eq!((a.command, a.out, a.json), (BenchModelsCommand::All, None, None));
    assert_eq!(parse(&["clip"]).command, BenchModelsCommand::Clip);
    let a = parse(&["jamba", "--out", "m.md"]);
    assert_eq!((a.command, a.out), (BenchModelsCommand::Jamba, Some(PathBuf::from("m.md"))));
    assert!(BenchModelsArgs::try_parse_from(["bench_models", "--skip-clip"]).is_err());
}
