//! Fuzzing of viper's input parsers on the stable toolchain (cargo-fuzz needs nightly).
//!
//! Three [`Target`]s, each an entry point that hostile bytes reach:
//!
//! - [`SAFETENSORS`]: a safetensors file through `viper_checkpoint::Checkpoint::open` (the header
//!   parser and our offset checks), then every tensor read back;
//! - [`IMAGE`]: encoded bytes through `viper_processor::ImageLoader::decode` (format sniffing, limits,
//!   the truncation rules, the decoders), then the AnyRes `Processor` on whatever decodes;
//! - [`TEMPLATE`]: a Jinja source through `viper_chat_template::ChatTemplate` (compile, then render a
//!   conversation on a small budget).
//!
//! [`fuzz`] mutates the target's seed inputs (fixtures and generated samples) with a deterministic,
//! seeded generator (bit flips, interesting integers, dictionary tokens, splices, repeated chunks,
//! structure-aware fix-ups) for a bounded time. A failure is a panic, a violated property (a decoded
//! image that does not process, a tensor whose values do not match its shape), or an input that runs
//! longer than [`Options::input_timeout`]; the input is saved under [`Options::artifacts`] and
//! returned in the [`Failure`]. Nothing is printed: the `viper-fuzz` binary and the tests report.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

mod targets;

pub use targets::{IMAGE, SAFETENSORS, TARGETS, TEMPLATE};

/// One fuzzed entry point.
#[derive(Debug)]
pub struct Target {
    /// Its name on the command line.
    pub name: &'static str,
    /// The inputs mutation starts from.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Tokens the mutator inserts (format keywords, markers, numbers).
    pub dictionary: &'static [&'static [u8]],
    /// Longest input generated.
    pub max_len: usize,
    /// Applied to half the mutated inputs, to repair what would stop them at the first check (PNG
    /// chunk checksums).
    pub fixup: Option<fn(&mut [u8])>,
    /// Runs one input: `Err` when a property the entry point promises does not hold. Errors of the
    /// entry point itself are expected and fine; a panic is a failure.
    pub run: fn(&[u8]) -> Result<(), String>,
}

/// How long and from which seed to fuzz.
#[derive(Debug, Clone)]
pub struct Options {
    /// Total time spent generating inputs.
    pub duration: Duration,
    /// Stop after this many inputs even if time is left (a run of fixed length: the same inputs on
    /// any machine fast enough).
    pub max_runs: Option<u64>,
    /// Seed of the input generator: the same seed generates the same sequence of inputs.
    pub seed: u64,
    /// Longest time one input may run before it counts as a hang.
    pub input_timeout: Duration,
    /// Where failing inputs are written.
    pub artifacts: PathBuf,
}

impl Options {
    /// From the environment: `VIPER_FUZZ_SECONDS` (default `default_seconds`), `VIPER_FUZZ_RUNS`
    /// (default: no limit), `VIPER_FUZZ_SEED` (default 0), `VIPER_FUZZ_INPUT_SECONDS` (default 20),
    /// `VIPER_FUZZ_ARTIFACTS` (default `fuzz-artifacts` under the system's temporary directory).
    pub fn from_env(default_seconds: f64) -> Self {
        let number = |name: &str| std::env::var(name).ok().and_then(|v| v.trim().parse::<f64>().ok());
        let seconds = number("VIPER_FUZZ_SECONDS").unwrap_or(default_seconds).max(0.0);
        Self {
            duration: Duration::from_secs_f64(seconds),
            max_runs: std::env::var("VIPER_FUZZ_RUNS").ok().and_then(|v| v.trim().parse().ok()),
            seed: std::env::var("VIPER_FUZZ_SEED").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0),
            input_timeout: Duration::from_secs_f64(number("VIPER_FUZZ_INPUT_SECONDS").unwrap_or(20.0).max(0.1)),
            artifacts: std::env::var_os("VIPER_FUZZ_ARTIFACTS")
                .map(PathBuf::from)
                .unwrap_or_else(|| std::env::temp_dir().join("fuzz-artifacts")),
        }
    }
}

/// A finished run without failures.
#[derive(Debug, Clone)]
pub struct Report {
    /// The target's name.
    pub target: &'static str,
    /// Inputs run.
    pub runs: u64,
    /// Time spent.
    pub elapsed: Duration,
}

/// What went wrong, with the input saved to reproduce it.
#[derive(Debug)]
pub struct Failure {
    /// The target's name.
    pub target: &'static str,
    /// Which input of the sequence (0-based) failed.
    pub run: u64,
    /// What happened: the panic message, the violated property, or the time it had run.
    pub what: String,
    /// The input, as written to `path`.
    pub input: Vec<u8>,
    /// Where the input was saved (`None` if it could not be written).
    pub path: Option<PathBuf>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} input #{} ({} bytes): {}", self.target, self.run, self.input.len(), self.what)?;
        match &self.path {
            Some(path) => write!(f, "; saved to {}", path.display()),
            None => write!(f, "; could not be saved"),
        }
    }
}

/// The input being run and when it started, shared with the watchdog.
struct Current {
    run: AtomicU64,
    started_ms: AtomicU64,
    input: Mutex<Vec<u8>>,
}

/// Fuzzes `target` for `options.duration`; the inputs run on a worker thread watched from this one,
/// so a hang is reported (the stuck thread is left behind) instead of blocking.
pub fn fuzz(target: &'static Target, options: &Options) -> Result<Report, Failure> {
    let epoch = Instant::now();
    let now_ms = move || epoch.elapsed().as_millis() as u64;
    let current = Arc::new(Current { run: AtomicU64::new(0), started_ms: AtomicU64::new(0), input: Mutex::default() });
    let stop = Arc::new(AtomicBool::new(false));
    let (done, result) = mpsc::channel();
    let worker = {
        let (current, stop, options) = (current.clone(), stop.clone(), options.clone());
        std::thread::Builder::new()
            .name(format!("fuzz-{}", target.name))
            .spawn(move || {
                let _ = done.send(work(target, &options, &current, &stop, now_ms));
            })
            .expect("spawn the fuzz worker")
    };
    let outcome = loop {
        match result.recv_timeout(Duration::from_millis(200)) {
            Ok(outcome) => break outcome,
            Err(mpsc::RecvTimeoutError::Disconnected) => break Err((0, "the worker thread died".into(), Vec::new())),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let running = Duration::from_millis(now_ms().saturating_sub(current.started_ms.load(Ordering::SeqCst)));
        if running > options.input_timeout {
            stop.store(true, Ordering::SeqCst);
            let input = current.input.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let run = current.run.load(Ordering::SeqCst);
            break Err((run, format!("still running after {running:.1?} (limit {:?})", options.input_timeout), input));
        }
    };
    match outcome {
        Ok(runs) => {
            let _ = worker.join();
            Ok(Report { target: target.name, runs, elapsed: epoch.elapsed() })
        }
        Err((run, what, input)) => {
            let path = save(options, target.name, run, &input);
            Err(Failure { target: target.name, run, what, input, path })
        }
    }
}

/// The worker: generates and runs inputs until the time is up; `Err((run, what, input))` on failure.
fn work(
    target: &'static Target,
    options: &Options,
    current: &Current,
    stop: &AtomicBool,
    now_ms: impl Fn() -> u64,
) -> Result<u64, (u64, String, Vec<u8>)> {
    let start = Instant::now();
    let mut mutator = Mutator::new(target, options.seed);
    let mut run = 0u64;
    while start.elapsed() < options.duration
        && options.max_runs.is_none_or(|max| run < max)
        && !stop.load(Ordering::SeqCst)
    {
        let input = mutator.next();
        *current.input.lock().unwrap_or_else(|e| e.into_inner()) = input.clone();
        current.run.store(run, Ordering::SeqCst);
        current.started_ms.store(now_ms(), Ordering::SeqCst);
        let outcome = std::panic::catch_unwind(|| (target.run)(&input));
        current.started_ms.store(now_ms(), Ordering::SeqCst);
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(property)) => return Err((run, format!("property violated: {property}"), input)),
            Err(panic) => return Err((run, format!("panicked: {}", panic_message(&*panic)), input)),
        }
        run += 1;
    }
    Ok(run)
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

fn save(options: &Options, target: &str, run: u64, input: &[u8]) -> Option<PathBuf> {
    std::fs::create_dir_all(&options.artifacts).ok()?;
    let path = options.artifacts.join(format!("{target}-seed{}-run{run}.bin", options.seed));
    std::fs::write(&path, input).ok()?;
    Some(path)
}

/// Interesting values for integers of every width: boundaries, powers of two, sizes.
const INTERESTING: [u64; 16] = [
    0,
    1,
    2,
    7,
    8,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0x7FFF,
    0xFFFF,
    0x1_0000,
    0x7FFF_FFFF,
    0xFFFF_FFFF,
    0x7FFF_FFFF_FFFF_FFFF,
    u64::MAX,
];

/// Number literals that break parsers written for small values.
const NUMBERS: [&[u8]; 10] = [
    b"0",
    b"-1",
    b"1",
    b"65535",
    b"65536",
    b"4294967295",
    b"4294967296",
    b"18446744073709551615",
    b"99999999999999999999999",
    b"1e308",
];

/// The input generator: stacked random mutations of seeds and of earlier outputs.
struct Mutator {
    rng: StdRng,
    target: &'static Target,
    seeds: Vec<Vec<u8>>,
    pool: Vec<Vec<u8>>,
}

impl Mutator {
    fn new(target: &'static Target, seed: u64) -> Self {
        let mut seeds = (target.seeds)();
        if seeds.is_empty() {
            seeds.push(Vec::new());
        }
        // Mixed with the target's name, so that the targets of one run do not mirror each other.
        let salt =
            target.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        Self { rng: StdRng::seed_from_u64(seed ^ salt), target, seeds, pool: Vec::new() }
    }

    fn next(&mut self) -> Vec<u8> {
        // Every seed once as it is, then mutants.
        if self.pool.len() < self.seeds.len() {
            let seed = self.seeds[self.pool.len()].clone();
            self.pool.push(seed.clone());
            return seed;
        }
        let from_pool = self.rng.random_bool(0.3);
        let mut data = if from_pool {
            self.pool[self.rng.random_range(0..self.pool.len())].clone()
        } else {
            self.seeds[self.rng.random_range(0..self.seeds.len())].clone()
        };
        let mut count = 1;
        while count < 8 && self.rng.random_bool(0.5) {
            count += 1;
        }
        for _ in 0..count {
            self.mutate(&mut data);
        }
        data.truncate(self.target.max_len);
        if let Some(fixup) = self.target.fixup {
            if self.rng.random_bool(0.5) {
                fixup(&mut data);
            }
        }
        if self.pool.len() < 512 {
            self.pool.push(data.clone());
        } else {
            let slot = self.rng.random_range(self.seeds.len()..self.pool.len());
            self.pool[slot] = data.clone();
        }
        data
    }

    fn pos(&mut self, len: usize) -> usize {
        self.rng.random_range(0..=len)
    }

    fn mutate(&mut self, data: &mut Vec<u8>) {
        let len = data.len();
        match self.rng.random_range(0..14) {
            0 if len > 0 => {
                let i = self.rng.random_range(0..len);
                data[i] ^= 1 << self.rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = self.rng.random_range(0..len);
                data[i] = self.rng.random();
            }
            2 if len > 0 => {
                let i = self.rng.random_range(0..len);
                data[i] = [0u8, 0xFF, 0x7F, 0x80, 0x01][self.rng.random_range(0..5)];
            }
            3 if len > 0 => {
                let value = INTERESTING[self.rng.random_range(0..INTERESTING.len())];
                let width = [1usize, 2, 4, 8][self.rng.random_range(0..4)];
                let bytes: Vec<u8> = if self.rng.random_bool(0.5) {
                    value.to_le_bytes()[..width].to_vec()
                } else {
                    value.to_be_bytes()[8 - width..].to_vec()
                };
                let i = self.rng.random_range(0..len);
                let end = (i + width).min(len);
                data[i..end].copy_from_slice(&bytes[..end - i]);
            }
            4 if len > 0 => {
                let i = self.rng.random_range(0..len);
                let n = self.rng.random_range(1..=(len - i).min(64));
                data.drain(i..i + n);
            }
            5 if len > 0 => {
                let i = self.rng.random_range(0..len);
                let n = self.rng.random_range(1..=(len - i).min(256));
                let chunk = data[i..i + n].to_vec();
                let at = self.pos(len);
                data.splice(at..at, chunk);
            }
            6 => {
                let n = self.rng.random_range(1..=16);
                let bytes: Vec<u8> = (0..n).map(|_| self.rng.random()).collect();
                let at = self.pos(len);
                data.splice(at..at, bytes);
            }
            7 | 8 if !self.target.dictionary.is_empty() => {
                let token = self.target.dictionary[self.rng.random_range(0..self.target.dictionary.len())];
                let at = self.pos(len);
                if self.rng.random_bool(0.5) || at == len {
                    data.splice(at..at, token.iter().copied());
                } else {
                    let end = (at + token.len()).min(len);
                    data.splice(at..end, token.iter().copied());
                }
            }
            9 => {
                // Crossover: this input's head, another seed's tail.
                let other = &self.seeds[self.rng.random_range(0..self.seeds.len())];
                let j = self.rng.random_range(0..=other.len());
                let tail = other[j..].to_vec();
                let at = self.pos(len);
                data.truncate(at);
                data.extend(tail);
            }
            10 if len > 0 => {
                let at = self.rng.random_range(0..len);
                data.truncate(at);
            }
            11 if len > 0 => {
                let i = self.rng.random_range(0..len);
                let delta = self.rng.random_range(1..=16u8);
                data[i] =
                    if self.rng.random_bool(0.5) { data[i].wrapping_add(delta) } else { data[i].wrapping_sub(delta) };
            }
            12 => {
                // A run of ASCII digits becomes a hostile number.
                let number = NUMBERS[self.rng.random_range(0..NUMBERS.len())];
                let digits: Vec<usize> = (0..len).filter(|&i| data[i].is_ascii_digit()).collect();
                if let Some(&start) = digits.get(self.rng.random_range(0..digits.len().max(1))) {
                    let end = (start..len).find(|&i| !data[i].is_ascii_digit()).unwrap_or(len);
                    data.splice(start..end, number.iter().copied());
                }
            }
            13 if len > 0 => {
                // A chunk repeated many times: nesting, long lists, long runs.
                let i = self.rng.random_range(0..len);
                let n = self.rng.random_range(1..=(len - i).min(32));
                let times = self.rng.random_range(2..=64);
                let chunk = data[i..i + n].repeat(times);
                data.splice(i..i, chunk);
            }
            _ => {
                let at = self.pos(len);
                data.insert(at, self.rng.random());
            }
        }
    }
}

/// A directory for the files a target writes, shared by all its runs.
pub(crate) fn scratch_dir() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temporary directory")).path()
}

/// The fixtures directory of the repository.
pub(crate) fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}
