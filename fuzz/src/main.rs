//! `viper-fuzz`: runs the fuzz targets for a bounded time, in parallel; exits non-zero with the saved
//! input of the first failure of each failing target.
//!
//! ```text
//! viper-fuzz [--seconds N] [--runs N] [--seed S] [TARGET...]   TARGET: safetensors, image, template (default: all)
//! ```
//!
//! The environment variables of `Options::from_env` apply; flags win over them.

use std::process::ExitCode;

use viper_fuzz::{fuzz, Options, TARGETS};

fn main() -> ExitCode {
    let mut options = Options::from_env(20.0);
    let mut names = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match arg.as_str() {
            "--seconds" => {
                let seconds = value("--seconds").parse::<f64>().unwrap_or_else(|_| usage("--seconds takes a number"));
                options.duration = std::time::Duration::from_secs_f64(seconds.max(0.0));
            }
            "--runs" => {
                options.max_runs = Some(value("--runs").parse().unwrap_or_else(|_| usage("--runs takes an integer")))
            }
            "--seed" => options.seed = value("--seed").parse().unwrap_or_else(|_| usage("--seed takes an integer")),
            "-h" | "--help" => usage(""),
            name => names.push(name.to_string()),
        }
    }
    let targets: Vec<_> = if names.is_empty() {
        TARGETS.to_vec()
    } else {
        names
            .iter()
            .map(|n| *TARGETS.iter().find(|t| t.name == n).unwrap_or_else(|| usage(&format!("unknown target `{n}`"))))
            .collect()
    };
    let results: Vec<_> = std::thread::scope(|scope| {
        let options = &options;
        let runs: Vec<_> = targets.iter().map(|&t| scope.spawn(move || fuzz(t, options))).collect();
        runs.into_iter().map(|r| r.join().expect("the watcher does not panic")).collect()
    });
    let mut failed = false;
    for result in results {
        match result {
            Ok(report) => println!(
                "{}: {} inputs in {:.1?} (seed {}), no failure",
                report.target, report.runs, report.elapsed, options.seed
            ),
            Err(failure) => {
                failed = true;
                eprintln!("FAILURE {failure}");
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("error: {problem}");
    }
    eprintln!("usage: viper-fuzz [--seconds N] [--runs N] [--seed S] [safetensors|image|template ...]");
    std::process::exit(2)
}
