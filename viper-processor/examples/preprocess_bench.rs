//! Times `Processor::process` (and its stages) for the Viper-Mamba-7B anyres config on synthetic images,
//! plus the PNG decode of the largest one.
//!
//! `cargo run --release -p viper-processor --example preprocess_bench [-- RUNS]`; `RAYON_NUM_THREADS=1`
//! for one thread. Prints medians in ms and an FNV-1a hash of each `pixel_values` (same hash = same bits).

use std::hint::black_box;
use std::io::Cursor;
use std::time::Instant;

use serde_json::json;
use viper_processor::{resize_bicubic, AnyResConfig, ImageLoader, Placement, Processor, RgbImage};

/// Seeded noise over a diagonal gradient, so the resampler sees both smooth areas and edges.
fn synthetic(width: u32, height: u32, seed: u64) -> RgbImage {
    let mut state = seed | 1;
    RgbImage::from_fn(width, height, |x, y| {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let r = state.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let base = [x * 255 / width.max(1), y * 255 / height.max(1), (x + y) * 127 / (width + height).max(1)];
        let noise = r.to_le_bytes();
        image::Rgb(std::array::from_fn(|c| (base[c] as u8).wrapping_add(noise[c] >> 2)))
    })
}

/// Viper-Mamba-7B: `[x * 336, y * 336]` for x, y in 1..=7 with x * y <= 49, CLIP-L/14-336.
fn processor() -> Processor {
    let pinpoints: Vec<[u32; 2]> =
        (1..=7u32).flat_map(|x| (1..=7u32).filter(move |y| x * y <= 49).map(move |y| [x * 336, y * 336])).collect();
    let config: AnyResConfig = serde_json::from_value(json!({
        "image_aspect_ratio": "anyres",
        "image_grid_pinpoints": pinpoints,
        "vision_preprocessor_config": {
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711],
            "size": {"shortest_edge": 336},
            "crop_size": {"height": 336, "width": 336},
        },
    }))
    .expect("config");
    config.resolve(336, 14, None).expect("processor")
}

/// Median wall time of `runs` calls of `f`, in ms.
fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up: page faults, rayon's pool
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn fnv1a(values: &[f32]) -> u64 {
    values
        .iter()
        .flat_map(|v| v.to_bits().to_le_bytes())
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

fn main() {
    let runs: usize = std::env::args().nth(1).map_or(15, |s| s.parse().expect("RUNS: a number"));
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("{cores} cores available, RAYON_NUM_THREADS={threads}, median of {runs} runs");
    let processor = processor();

    for (width, height) in [(2352, 2352), (672, 448), (1920, 1080)] {
        let image = synthetic(width, height, u64::from(width) * 31 + u64::from(height));
        let out = processor.process(&image).expect("process");
        let g = &out.geometry;
        let total = median_ms(runs, || drop(black_box(processor.process(&image).unwrap())));

        // Stages timed alone through the public functions (process runs the base and the tile resize
        // side by side, and normalises the tiles straight from the resized image).
        let placement = Placement::new(g.original_size, g.best_resolution);
        let resize = median_ms(runs, || drop(black_box(resize_bicubic(&image, placement.size.0, placement.size.1))));
        let base = median_ms(runs, || drop(black_box(resize_bicubic(&image, 336, 336))));
        let len = out.pixel_values.len();
        let touch = median_ms(runs, || {
            let mut v = vec![0f32; len];
            v.iter_mut().for_each(|x| *x = 1.0);
            drop(black_box(v));
        });
        println!(
            "{width}x{height} -> best {:?}, {} crops: process {total:.1} ms | alone: resize {resize:.1}, base \
             {base:.1}, first write of a plain {:.0} MB Vec (no huge-page hint) {touch:.1} | fnv1a {:016x}",
            g.best_resolution,
            g.num_crops(),
            len as f64 * 4e-6,
            fnv1a(&out.pixel_values),
        );
    }

    let image = synthetic(2352, 2352, 2352 * 32);
    let mut png = Vec::new();
    image.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png).expect("png encode");
    let loader = ImageLoader::default();
    assert_eq!(loader.decode(&png).expect("png decode"), image);
    let decode = median_ms(runs, || drop(black_box(loader.decode(&png).unwrap())));
    println!("PNG decode 2352x2352 ({:.1} MB): {decode:.1} ms", png.len() as f64 / 1e6);
}
