use super::*;
use burn::backend::NdArray;
use safetensors::tensor::TensorView;

type B = NdArray;

fn write(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, TensorView<'_>)> =
        tensors.iter().map(|(k, d, s, b)| (k.to_string(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn sample(dir: &Path) -> PathBuf {
    let p = dir.join("model.safetensors");
    let bf: Vec<u8> = [1.5f32, -2.0, 0.25].iter().flat_map(|&x| bf16::from_f32(x).to_le_bytes()).collect();
    write(
        &p,
        &[
            ("backbone.a.weight", Dtype::F32, vec![2, 3], f32_bytes(&[1., 2., 3., 4., 5., 6.])),
            ("backbone.a.bias", Dtype::F32, vec![2], f32_bytes(&[0.5, -0.5])),
            ("backbone.b", Dtype::BF16, vec![3], bf),
        ],
    );
    p
}

#[test]
fn loads_and_converts() {
    let dir = tempfile::tempdir().unwrap();
    sample(dir.path());
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ckpt.prefix_of("a.weight").as_deref(), Some("backbone."));
    let w = ckpt.weights(LoadOptions::default()).pp("backbone");
    let dev = Default::default();
    let b = w.tensor::<B, 1>("b", [3], &dev).unwrap();
    assert_eq!(b.into_data().to_vec::<f32>().unwrap(), vec![1.5, -2.0, 0.25]);
    let lin = w.linear::<B>("a", 3, 2, true, &dev).unwrap();
    let y = lin.forward(Tensor::<B, 2>::from_floats([[1.0, 0.0, -1.0]], &dev));
    assert_eq!(y.into_data().to_vec::<f32>().unwrap(), vec![1. - 3. + 0.5, 4. - 6. - 0.5]);
    assert!(ckpt.unused_keys(|_| false).is_empty());
}

#[test]
fn shape_mismatch_names_key_and_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    sample(dir.path());
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    let err = ckpt.weights(LoadOptions::default()).tensor::<B, 2>("backbone.a.weight", [3, 2], &Default::default());
    let msg = err.unwrap_err().to_string();
    assert!(msg.contains("backbone.a.weight") && msg.contains("[2, 3]") && msg.contains("[3, 2]"), "{msg}");
}

#[test]
fn missing_key_suggests_similar() {
    let dir = tempfile::tempdir().unwrap();
    sample(dir.path());
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    let err = ckpt.weights(LoadOptions::default()).tensor::<B, 1>("model.a.bias", [2], &Default::default());
    match err {
        Err(CheckpointError::MissingTensor { key, hint }) => {
            assert_eq!(key, "model.a.bias");
            assert!(hint.contains("backbone.a.bias"), "{hint}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn corrupt_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = sample(dir.path());
    let bytes = std::fs::read(&p).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("truncated", bytes[..bytes.len() - 5].to_vec()),
        ("header only half", bytes[..12].to_vec()),
        ("huge header length", {
            let mut b = bytes.clone();
            b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
            b
        }),
        ("not json", {
            let mut b = bytes.clone();
            b[8] = b'#';
            b
        }),
        ("lying offsets", {
            let s = String::from_utf8_lossy(&bytes).replace("[0,24]", "[0,28]");
            s.into_bytes()
        }),
    ];
    for (name, data) in cases {
        let q = dir.path().join(format!("{}.safetensors", name.replace(' ', "_")));
        std::fs::write(&q, data).unwrap();
        let err = Checkpoint::open(&q).expect_err(name);
        assert!(matches!(err, CheckpointError::InvalidFile { .. }), "{name}: {err}");
        assert!(err.to_string().contains(&*q.to_string_lossy()), "{name}: {err}");
    }
}

#[test]
fn sharded_index() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("model-00001-of-00002.safetensors"), &[("x", Dtype::F32, vec![1], f32_bytes(&[1.0]))]);
    let h: Vec<u8> = f16::from_f32(2.0).to_le_bytes().to_vec();
    write(&dir.path().join("model-00002-of-00002.safetensors"), &[("y", Dtype::F16, vec![1], h)]);
    let index = r#"{"metadata":{},"weight_map":{"x":"model-00001-of-00002.safetensors","y":"model-00002-of-00002.safetensors"}}"#;
    std::fs::write(dir.path().join(INDEX_FILE), index).unwrap();
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    let w = ckpt.weights(LoadOptions::default());
    let y = w.tensor::<B, 1>("y", [1], &Default::default()).unwrap();
    assert_eq!(y.into_data().to_vec::<f32>().unwrap(), vec![2.0]);

    let wrong = r#"{"weight_map":{"x":"model-00002-of-00002.safetensors","y":"model-00002-of-00002.safetensors"}}"#;
    std::fs::write(dir.path().join(INDEX_FILE), wrong).unwrap();
    assert!(matches!(Checkpoint::open(dir.path()), Err(CheckpointError::InvalidIndex { .. })));
    std::fs::write(dir.path().join(INDEX_FILE), r#"{"weight_map":{"x":"../x.safetensors"}}"#).unwrap();
    assert!(matches!(Checkpoint::open(dir.path()), Err(CheckpointError::InvalidIndex { .. })));
}

#[test]
fn empty_dir_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(Checkpoint::open(dir.path()), Err(CheckpointError::NoWeights(_))));
}
