//! The merged token layout of `spatial_unpad` (docs/spec.md §4.3, docs/reference-checkpoints.md Q9–Q11) by the processor's
//! geometry (whose rounding is tested in `viper-processor`).

use crate::common::B;
use burn::prelude::*;
use viper_processor::{AnyResGeometry, Unpad};
use viper_vision::{spatial_unpad_merge, VisionError};

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
    let geometry = geometry((97, 40), (6, 4));
    assert_eq!(geometry.grid, (3, 2));
    assert_eq!(geometry.unpad, Unpad { grid_hw: (4, 6), rows: 1..3, cols: 0..6 });
    let merged = spatial_unpad_merge(features, &geometry, newline).unwrap();

    let token = |k: usize, t: usize| (0..d).map(|c| (1000 * k + 10 * t + c) as f32).collect::<Vec<_>>();
    let mut want: Vec<Vec<f32>> = (0..side * side).map(|t| token(0, t)).collect();
    for y in geometry.unpad.rows.clone() {
        for x in geometry.unpad.cols.clone() {
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
    let merged = spatial_unpad_merge(labelled(2, 4, 1), &geometry((1, 1000), (2, 2)), newline.clone()).unwrap();
    assert_eq!(rows_of(merged), vec![vec![0.0], vec![10.0], vec![20.0], vec![30.0], vec![7.0], vec![7.0]]);
    // No kept row: only the base crop.
    let merged = spatial_unpad_merge(labelled(2, 4, 1), &geometry((1000, 1), (2, 2)), newline).unwrap();
    assert_eq!(merged.dims(), [4, 1]);
}

#[test]
fn bad_merge_inputs_are_errors() {
    let newline = || Tensor::<B, 1>::zeros([2], &Default::default());
    let bad = |r: Result<Tensor<B, 2>, VisionError>| matches!(r, Err(VisionError::Input(_)));
    let square = geometry((10, 10), (4, 4)); // 2 x 2 tiles of 2 x 2 features
    assert!(bad(spatial_unpad_merge(labelled(4, 4, 2), &square, newline())), "crop count");
    assert!(bad(spatial_unpad_merge(labelled(5, 5, 2), &square, newline())), "CLS kept");
    let empty = AnyResGeometry { grid: (0, 2), ..square.clone() };
    assert!(bad(spatial_unpad_merge(labelled(5, 4, 2), &empty, newline())), "empty grid");
    let outside = AnyResGeometry { unpad: Unpad { grid_hw: (4, 4), rows: 0..4, cols: 1..5 }, ..square.clone() };
    assert!(bad(spatial_unpad_merge(labelled(5, 4, 2), &outside, newline())), "unpad region outside the grid");
    let other_grid = AnyResGeometry { unpad: Unpad { grid_hw: (6, 4), rows: 0..6, cols: 0..4 }, ..square.clone() };
    assert!(bad(spatial_unpad_merge(labelled(5, 4, 2), &other_grid, newline())), "unpad of another grid");
    let wide = Tensor::<B, 1>::zeros([3], &Default::default());
    assert!(bad(spatial_unpad_merge(labelled(5, 4, 2), &square, wide)), "newline width");
}

/// The processor's geometry of a `size = (W, H)` image for the single pinpoint `best`, on tiles of
/// 2 x 2 pixels with one feature per pixel.
fn geometry(size: (u32, u32), best: (u32, u32)) -> AnyResGeometry {
    AnyResGeometry::new(size, &[best], 2, 2).unwrap()
}
