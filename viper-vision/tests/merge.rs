//! `spatial_unpad` geometry (spec §4.3, reference README Q9–Q11) and the merged token layout.

mod common;

use burn::prelude::*;
use common::B;
use viper_vision::{spatial_unpad_merge, unpad_region, UnpadRegion, VisionError};

#[test]
fn unpad_rounding_matches_upstream() {
    // (grid rows, grid cols, W, H) → kept region; the first four are the README's Q10 / spec §4.3 examples.
    let cases = [
        ((8, 8, 97, 61), UnpadRegion { top: 1, left: 0, rows: 6, cols: 8 }), // new_h = 5, keeps 6
        ((6, 9, 131, 45), UnpadRegion { top: 1, left: 0, rows: 4, cols: 9 }), // new_h = 3, keeps 4
        ((3, 3, 15, 29), UnpadRegion { top: 0, left: 1, rows: 3, cols: 1 }),
        ((24, 144, 2000, 300), UnpadRegion { top: 1, left: 0, rows: 22, cols: 144 }), // new_h = 21
        ((8, 8, 84, 84), UnpadRegion { top: 0, left: 0, rows: 8, cols: 8 }),          // square keeps all
        ((4, 4, 23, 17), UnpadRegion { top: 1, left: 0, rows: 2, cols: 4 }),
        ((12, 4, 40, 120), UnpadRegion { top: 0, left: 0, rows: 12, cols: 4 }),
        ((24, 24, 1, 1000), UnpadRegion { top: 0, left: 12, rows: 24, cols: 0 }), // nothing left of a sliver
    ];
    for ((rows, cols, w, h), want) in cases {
        assert_eq!(unpad_region(rows, cols, w, h).unwrap(), want, "{w}x{h} on {rows}x{cols}");
    }
    assert_eq!(UnpadRegion { top: 1, left: 0, rows: 6, cols: 8 }.num_tokens(), 54);
}

/// Features whose values name their origin: crop k, token t, channel c → 1000k + 10t + c.
fn labelled(crops: usize, tokens: usize, width: usize) -> Tensor<B, 3> {
    let values: Vec<f32> = (0..crops * tokens * width)
        .map(|i| (1000 * (i / (tokens * width)) + 10 * (i / width % tokens) + i % width) as f32)
        .collect();
    Tensor::from_data(TensorData::new(values, [crops, tokens, width]), &Default::default())
}

fn rows_of(t: Tensor<B, 2>) -> Vec<Vec<f32>> {
    let [_, d] = t.dims();
    t.into_data().to_vec::<f32>().unwrap().chunks(d).map(<[f32]>::to_vec).collect()
}

#[test]
fn merged_layout_is_base_then_rows_with_newlines() {
    // 3 x 2 tiles (cols x rows) of 2 x 2 tokens, a 97x40 image: the 4 x 6 grid keeps rows 1..3.
    let (cols, rows, side, d) = (3, 2, 2, 2);
    let features = labelled(1 + cols * rows, side * side, d);
    let newline = Tensor::<B, 1>::from_floats([-1.0, -2.0], &Default::default());
    let merged = spatial_unpad_merge(features, (cols, rows), (97, 40), newline).unwrap();
    let region = unpad_region(rows * side, cols * side, 97, 40).unwrap();
    assert_eq!(region, UnpadRegion { top: 1, left: 0, rows: 2, cols: 6 });

    let token = |k: usize, t: usize| (0..d).map(|c| (1000 * k + 10 * t + c) as f32).collect::<Vec<_>>();
    let mut want: Vec<Vec<f32>> = (0..side * side).map(|t| token(0, t)).collect();
    for y in region.top..region.top + region.rows {
        for x in region.left..region.left + region.cols {
            let (ty, r, tx, c) = (y / side, y % side, x / side, x % side);
            want.push(token(1 + ty * cols + tx, r * side + c));
        }
        want.push(vec![-1.0, -2.0]);
    }
    assert_eq!(rows_of(merged), want);
}

#[test]
fn degenerate_regions_keep_upstream_semantics() {
    let newline = Tensor::<B, 1>::from_floats([7.0], &Default::default());
    // No kept column: every row is just its newline.
    let merged = spatial_unpad_merge(labelled(2, 4, 1), (1, 1), (1, 1000), newline.clone()).unwrap();
    assert_eq!(rows_of(merged), vec![vec![0.0], vec![10.0], vec![20.0], vec![30.0], vec![7.0], vec![7.0]]);
    // No kept row: only the base crop.
    let merged = spatial_unpad_merge(labelled(2, 4, 1), (1, 1), (1000, 1), newline).unwrap();
    assert_eq!(merged.dims(), [4, 1]);
}

#[test]
fn bad_merge_inputs_are_errors() {
    let newline = || Tensor::<B, 1>::zeros([2], &Default::default());
    let bad = |r: Result<Tensor<B, 2>, VisionError>| matches!(r, Err(VisionError::Input(_)));
    assert!(bad(spatial_unpad_merge(labelled(4, 4, 2), (2, 2), (10, 10), newline())), "crop count");
    assert!(bad(spatial_unpad_merge(labelled(5, 5, 2), (2, 2), (10, 10), newline())), "CLS kept");
    assert!(bad(spatial_unpad_merge(labelled(5, 4, 2), (0, 2), (10, 10), newline())), "empty grid");
    assert!(bad(spatial_unpad_merge(labelled(5, 4, 2), (2, 2), (0, 10), newline())), "empty image");
    let wide = Tensor::<B, 1>::zeros([3], &Default::default());
    assert!(bad(spatial_unpad_merge(labelled(5, 4, 2), (2, 2), (10, 10), wide)), "newline width");
    assert!(matches!(unpad_region(4, 4, 10, 0), Err(VisionError::Input(_))));
}
