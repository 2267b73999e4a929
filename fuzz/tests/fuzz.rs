//! Each fuzz target for `VIPER_FUZZ_SECONDS` (default 3 s here, so the workspace tests stay quick; CI
//! runs the `viper-fuzz` binary longer) and at most `VIPER_FUZZ_RUNS` inputs (default 20,000, so the
//! inputs tried are the same on any machine). The three tests run in parallel.

use viper_fuzz::{fuzz, Options, Target, IMAGE, SAFETENSORS, TEMPLATE};

fn check(target: &'static Target) {
    let mut options = Options::from_env(3.0);
    options.max_runs.get_or_insert(20_000);
    match fuzz(target, &options) {
        Ok(report) => assert!(report.runs > 0, "{}: no input ran", report.target),
        Err(failure) => panic!("{failure}"),
    }
}

#[test]
fn safetensors_header_parser() {
    check(&SAFETENSORS);
}

#[test]
fn image_decoder_and_processor() {
    check(&IMAGE);
}

#[test]
fn template_renderer() {
    check(&TEMPLATE);
}
