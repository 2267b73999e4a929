//! The parallel resampler and the fused tile normalisation give the same bits on any number of threads
//! and equal the straightforward sequential pipeline they replaced (kept below as the reference), on
//! sizes the Pillow fixtures do not reach.

use image::{imageops, RgbImage};
use viper_processor::{
    divide_to_patches, resize_and_pad, resize_bicubic, select_best_resolution, PreprocessorConfig, Processor,
};

/// The sequential Pillow BICUBIC port as it was before the passes ran in parallel.
mod reference {
    use image::RgbImage;

    fn bicubic(x: f64) -> f64 {
        const A: f64 = -0.5;
        let x = x.abs();
        if x < 1.0 {
            ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            (((x - 5.0) * x + 8.0) * x - 4.0) * A
        } else {
            0.0
        }
    }

    /// `(start, weights)` per output index.
    fn coefficients(in_size: u32, out_size: u32) -> Vec<(usize, Vec<i32>)> {
        let scale = f64::from(in_size) / f64::from(out_size);
        let filterscale = scale.max(1.0);
        let support = 2.0 * filterscale;
        let one = f64::from(1u32 << 22);
        (0..out_size)
            .map(|i| {
                let center = (f64::from(i) + 0.5) * scale;
                let min = ((center - support + 0.5) as i64).max(0);
                let max = ((center + support + 0.5) as i64).min(i64::from(in_size));
                let taps: Vec<f64> = (min..max).map(|x| bicubic((x as f64 - center + 0.5) / filterscale)).collect();
                let sum: f64 = taps.iter().sum();
                let weights = taps
                    .iter()
                    .map(|&t| {
                        let t = if sum != 0.0 { t / sum } else { t };
                        if t < 0.0 {
                            (-0.5 + t * one) as i32
                        } else {
                            (0.5 + t * one) as i32
                        }
                    })
                    .collect();
                (min as usize, weights)
            })
            .collect()
    }

    fn clip8(acc: i32) -> u8 {
        (acc >> 22).clamp(0, 255) as u8
    }

    pub fn resize(image: &RgbImage, width: u32, height: u32) -> RgbImage {
        let (in_w, in_h) = image.dimensions();
        if (width, height) == (in_w, in_h) {
            return image.clone();
        }
        if width == 0 || height == 0 || in_w == 0 || in_h == 0 {
            return RgbImage::new(width, height);
        }
        let vc = (height != in_h).then(|| coefficients(in_h, height));
        let (mut pixels, mut first_row) = (image.as_raw().clone(), 0);
        if width != in_w {
            let rows = vc.as_ref().map_or(0..in_h as usize, |c| {
                let (last, k) = c.last().unwrap();
                c[0].0..last + k.len()
            });
            first_row = rows.start;
            let hc = coefficients(in_w, width);
            let mut out = Vec::new();
            for y in rows {
                let row = &pixels[y * in_w as usize * 3..];
                for (start, k) in &hc {
                    let mut acc = [1 << 21; 3];
                    for (t, &w) in k.iter().enumerate() {
                        for c in 0..3 {
                            acc[c] += i32::from(row[(start + t) * 3 + c]) * w;
                        }
                    }
                    out.extend(acc.map(clip8));
                }
            }
            pixels = out;
        }
        if let Some(vc) = vc {
            let row_len = width as usize * 3;
            let mut out = Vec::new();
            for (start, k) in &vc {
                for x in 0..row_len {
                    let acc = k
                        .iter()
                        .enumerate()
                        .fold(1 << 21, |a, (t, &w)| a + i32::from(pixels[(start - first_row + t) * row_len + x]) * w);
                    out.push(clip8(acc));
                }
            }
            pixels = out;
        }
        RgbImage::from_raw(width, height, pixels).unwrap()
    }
}

/// Seeded noise over a gradient.
fn noise(width: u32, height: u32, seed: u64) -> RgbImage {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    RgbImage::from_fn(width, height, |x, y| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let n = state.to_le_bytes();
        image::Rgb([((x * 7) as u8).wrapping_add(n[0] >> 1), ((y * 5) as u8).wrapping_add(n[1] >> 1), n[2]])
    })
}

/// `f` on a rayon pool of `threads` threads.
fn on_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
}

/// Upstream's pipeline step by step: resize + paste on a canvas, crop tiles, normalise each crop.
fn reference_pixel_values(image: &RgbImage, pinpoints: &[(u32, u32)], s: u32, p: &PreprocessorConfig) -> Vec<f32> {
    let best = select_best_resolution(image.dimensions(), pinpoints).unwrap();
    let placement = viper_processor::Placement::new(image.dimensions(), best);
    let resized = reference::resize(image, placement.size.0, placement.size.1);
    let mut canvas = RgbImage::new(best.0, best.1);
    imageops::replace(&mut canvas, &resized, placement.offset.0.into(), placement.offset.1.into());
    let mut crops = vec![reference::resize(image, s, s)];
    for y in (0..best.1).step_by(s as usize) {
        for x in (0..best.0).step_by(s as usize) {
            crops.push(imageops::crop_imm(&canvas, x, y, s, s).to_image());
        }
    }
    let rescale = if p.do_rescale { p.rescale_factor } else { 1.0 };
    let mut out = Vec::new();
    for crop in &crops {
        for c in 0..3 {
            let (mean, std) = (p.image_mean[c] as f32, p.image_std[c] as f32);
            out.extend(crop.pixels().map(|px| {
                let x = (f64::from(px[c]) * rescale) as f32;
                if p.do_normalize {
                    (x - mean) / std
                } else {
                    x
                }
            }));
        }
    }
    out
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn resize_is_independent_of_threads_and_equals_the_sequential_port() {
    let cases = [
        ((97, 61), [(336, 336), (61, 97), (1, 61), (97, 1), (500, 17)]),
        ((1001, 333), [(336, 336), (1008, 336), (999, 333), (1001, 335), (40, 1000)]),
    ];
    for ((w, h), targets) in cases {
        let image = noise(w, h, u64::from(w * h));
        for (tw, th) in targets {
            let want = reference::resize(&image, tw, th);
            for threads in [1, 3, 4] {
                let got = on_threads(threads, || resize_bicubic(&image, tw, th));
                assert!(got == want, "{w}x{h} -> {tw}x{th} on {threads} threads");
            }
        }
    }
}

#[test]
fn process_is_independent_of_threads_and_equals_the_sequential_pipeline() {
    // Viper-Mamba-7B's pinpoints: x, y in 1..=7, x * y <= 49 (all 49), tiles of 336.
    let big: Vec<(u32, u32)> = (1..=7).flat_map(|x| (1..=7).map(move |y| (x * 336, y * 336))).collect();
    let small: Vec<(u32, u32)> = (1..=4).flat_map(|x| (1..=4).map(move |y| (x * 56, y * 56))).collect();
    let clip = PreprocessorConfig::default();
    let plain = PreprocessorConfig { do_normalize: false, do_rescale: false, ..Default::default() };
    let cases = [
        (&big, 336, &clip, (2352, 2352)),
        (&big, 336, &clip, (1001, 333)),
        (&small, 56, &clip, (97, 61)),
        (&small, 56, &plain, (61, 97)),
        (&small, 56, &clip, (3, 200)),
    ];
    for (pinpoints, s, p, (w, h)) in cases {
        let image = noise(w, h, u64::from(w + h));
        let processor = Processor::new(pinpoints.clone(), s, 14, p.clone()).unwrap();
        let want = reference_pixel_values(&image, pinpoints, s, p);
        for threads in [1, 4] {
            let out = on_threads(threads, || processor.process(&image)).unwrap();
            assert_eq!(out.shape[0], out.geometry.num_crops());
            assert!(same_bits(&out.pixel_values, &want), "{w}x{h} on {threads} threads");
        }
    }
}

#[test]
fn pad_and_divide_equal_the_image_crate_versions() {
    let image = noise(97, 61, 5);
    let placement = viper_processor::Placement::new((97, 61), (112, 112));
    let mut canvas = RgbImage::new(112, 112);
    let resized = reference::resize(&image, placement.size.0, placement.size.1);
    imageops::replace(&mut canvas, &resized, placement.offset.0.into(), placement.offset.1.into());
    assert!(resize_and_pad(&image, (112, 112)) == canvas);
    for size in [56, 50, 1, 200] {
        let tiles = divide_to_patches(&canvas, size);
        let want: Vec<RgbImage> = (0..112)
            .step_by(size as usize)
            .flat_map(|y| (0..112).step_by(size as usize).map(move |x| (x, y)))
            .map(|(x, y)| imageops::crop_imm(&canvas, x, y, size, size).to_image())
            .collect();
        assert!(tiles == want, "tiles of {size}");
    }
    assert!(divide_to_patches(&canvas, 0).is_empty());
}
