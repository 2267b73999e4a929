//! Prefill projections and attention's batched products through cuBLAS on the CUDA runtime.
//!
//! Burn 0.21's bf16 matmul (cubek) reaches 200–280 TFLOP/s on an H200 at the prefill shapes (every
//! strategy, swept in BENCHMARKS.md); the products are ~80 % of a prefill layer. cuBLAS is what the
//! PyTorch reference itself runs, so its results also match the reference's rounding more closely.
//!
//! cuBLAS is loaded at run time (cudarc's dynamic loading, see [`available`]): where `libcublas`
//! cannot be found or initialised, [`linear`] returns `None` (logged once) and the caller falls back
//! to Burn's matmul.
//!
//! CubeCL runs its kernels on its own non-blocking stream, which it does not expose, so a product is
//! ordered by host synchronisation: wait for CubeCL's queue, run the GEMM on our stream, wait for it.
//! The GPU idles during those waits: at L = 2048 on an H200 they are about a third of a prefill's time
//! (BENCHMARKS.md), still far less than the matmul time saved. Decode (≤ 8 rows) uses the GEMV kernel.

use std::any::Any;
use std::collections::HashMap;
use std::ffi::{c_int, c_longlong, c_void};
use std::sync::{Arc, Mutex, OnceLock};

use burn::tensor::{DType, Shape};
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::client::ComputeClient;
use cubecl::cuda::{CudaDevice, CudaRuntime};
use cubecl::server::Handle;
use cudarc::cublas::{result as blas, sys, CudaBlas};
use cudarc::driver::{CudaContext, CudaStream};

/// Whether `libcublas` can be loaded (the products then go through it on CUDA devices): from the
/// loader's path, else from the CUDA toolkit's usual directories (`$CUDA_PATH`, `$CUDA_HOME`,
/// `/usr/local/cuda*`), which toolkit installs often leave off it.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        // SAFETY: only probes whether the library can be opened.
        let present = || unsafe { sys::is_culib_present() };
        present() || (preload_from_toolkit() && present())
    })
}

/// Opens `libcublas.so.{13,12}` from the toolkit's directories and keeps it loaded, so that cudarc's
/// own lookup by soname finds it. Returns whether one was opened.
fn preload_from_toolkit() -> bool {
    use std::path::PathBuf;
    let mut dirs: Vec<PathBuf> = ["CUDA_PATH", "CUDA_HOME", "CUDA_ROOT"]
        .iter()
        .filter_map(std::env::var_os)
        .flat_map(|root| {
            let root = PathBuf::from(root);
            [root.join("lib64"), root.join("targets/x86_64-linux/lib"), root.join("lib")]
        })
        .collect();
    if let Ok(entries) = std::fs::read_dir("/usr/local") {
        let mut roots: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("cuda")))
            .collect();
        roots.sort();
        roots.reverse(); // `cuda` (the usual symlink) after the versioned ones, newest version first
        dirs.extend(roots.into_iter().flat_map(|r| [r.join("lib64"), r.join("targets/x86_64-linux/lib")]));
    }
    for dir in dirs {
        for name in ["libcublas.so.13", "libcublas.so.12"] {
            let path = dir.join(name);
            if !path.is_file() {
                continue;
            }
            // SAFETY: loading cuBLAS runs only its initialisers; the handle is leaked on purpose so
            // the library stays mapped for cudarc, which opens it again by soname.
            match unsafe { libloading::Library::new(&path) } {
                Ok(lib) => {
                    std::mem::forget(lib);
                    log::info!("cuBLAS loaded from {}", path.display());
                    return true;
                }
                Err(e) => log::debug!("cannot open {}: {e}", path.display()),
            }
        }
    }
    false
}

/// A cuBLAS handle bound to a stream of CubeCL's (primary) context on one device.
struct Gemm {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
}

/// A device's GEMM state, shared by the threads that use the device.
type SharedGemm = Arc<Mutex<Gemm>>;

/// One entry per device ordinal; `None` once setting it up failed (logged once).
fn gemm_for(ordinal: usize) -> Option<SharedGemm> {
    static GEMMS: OnceLock<Mutex<HashMap<usize, Option<SharedGemm>>>> = OnceLock::new();
    let mut map = GEMMS.get_or_init(Default::default).lock().ok()?;
    map.entry(ordinal)
        .or_insert_with(|| {
            if !available() {
                log::warn!("libcublas not found: prefill projections use Burn's matmul");
                return None;
            }
            let setup = || -> Result<Gemm, String> {
                let ctx = CudaContext::new(ordinal).map_err(|e| format!("{e:?}"))?;
                let stream = ctx.new_stream().map_err(|e| format!("{e:?}"))?;
                let blas = CudaBlas::new(stream.clone()).map_err(|e| format!("{e:?}"))?;
                Ok(Gemm { ctx, stream, blas })
            };
            match setup() {
                Ok(g) => {
                    log::info!("prefill projections on device {ordinal} use cuBLAS");
                    Some(Arc::new(Mutex::new(g)))
                }
                Err(e) => {
                    log::warn!("cuBLAS setup failed on device {ordinal} ({e}): prefill projections use Burn's matmul");
                    None
                }
            }
        })
        .clone()
}

/// Row stride of a `[b, l, c]` tensor viewed as `b·l` rows of `c` unit-stride elements, if it is one.
fn row_stride(shape: &[usize], strides: &[usize]) -> Option<usize> {
    let (b, l, c) = (shape[0], shape[1], shape[2]);
    if strides[2] != 1 && c > 1 {
        return None;
    }
    let rs = match (b, l) {
        (1, _) => strides[1],
        (_, 1) => strides[0],
        _ if strides[0] == l * strides[1] => strides[1],
        _ => return None,
    };
    (rs >= c).then_some(rs)
}

/// cuBLAS's name for `dtype` (f32, bf16, f16).
fn cuda_type(dtype: DType) -> Option<sys::cudaDataType> {
    match dtype {
        DType::F32 => Some(sys::cudaDataType::CUDA_R_32F),
        DType::BF16 => Some(sys::cudaDataType::CUDA_R_16BF),
        DType::F16 => Some(sys::cudaDataType::CUDA_R_16F),
        _ => None,
    }
}

/// f32 accumulation; f32 inputs stay f32 (PEDANTIC: never TF32, whatever the handle's math mode or
/// NVIDIA_TF32_OVERRIDE).
fn compute_type(dtype: DType) -> sys::cublasComputeType_t {
    match dtype {
        DType::F32 => sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_PEDANTIC,
        _ => sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
    }
}

/// Runs one cuBLAS call on our stream of device `ordinal`, ordered against CubeCL's by host waits:
/// `call` gets the handle and the device pointers of `handles` (in order) once CubeCL's queue (the
/// producers of the inputs) has drained, and our stream is waited for before returning (CubeCL's next
/// kernels read the output or reuse the inputs' memory). `None`, logged, where anything fails.
fn ordered<const N: usize>(
    client: &ComputeClient<CudaRuntime>,
    ordinal: usize,
    handles: [&Handle; N],
    call: impl FnOnce(sys::cublasHandle_t, [*mut c_void; N]) -> Result<(), blas::CublasError>,
) -> Option<()> {
    let gemm = gemm_for(ordinal)?;
    let gemm = gemm.lock().ok()?;
    // Pointers first, while CubeCL's queue may still be running: the round trips then overlap GPU
    // work. The resources are held until our stream has finished.
    let mut resources = Vec::with_capacity(N);
    for h in handles {
        resources.push(client.get_resource(h.clone()).ok()?);
    }
    let ptrs: [*mut c_void; N] = core::array::from_fn(|i| resources[i].resource().ptr as *mut c_void);
    cubecl::future::block_on(client.sync()).ok()?;
    gemm.ctx.bind_to_thread().ok()?;
    let done = call(*gemm.blas.handle(), ptrs);
    let synced = gemm.stream.synchronize();
    match (done, synced) {
        (Ok(()), Ok(())) => Some(()),
        (d, s) => {
            log::warn!("cuBLAS call failed ({d:?}, {s:?}); falling back to Burn's ops");
            None
        }
    }
}

/// `x · w` for `x` `[b, l, k]` and `w` `[k, n]` of one dtype (f32, bf16 or f16; f32 accumulation, no
/// TF32), into a new `[b, l, n]`. Returns `None`, having launched nothing, where the runtime is not
/// CUDA, the layouts are not GEMM-able as they are, or cuBLAS is unavailable.
pub fn linear<R: CubeRuntime>(x: &CubeTensor<R>, w: &CubeTensor<R>) -> Option<CubeTensor<R>> {
    let client = (&x.client as &dyn Any).downcast_ref::<ComputeClient<CudaRuntime>>()?;
    let ordinal = (&x.device as &dyn Any).downcast_ref::<CudaDevice>()?.index;
    let data_type = cuda_type(x.dtype)?;
    let (xs, ws) = (x.meta.shape(), w.meta.shape());
    let (m, k, n) = (xs[0] * xs[1], xs[2], ws[1]);
    if w.dtype != x.dtype || ws[0] != k || m == 0 || n == 0 || k == 0 {
        return None;
    }
    let ldb = row_stride(xs, x.meta.strides())?;
    // Column-major view: outᵀ (n × m) = op(W) (n × k) · xᵀ (k × m). A `[k, n]` weight with strides
    // (1, s) — the transposed view of PyTorch's `[n, k]` buffer, as the loader builds it — is a
    // column-major k × n matrix (transposed: T); with strides (s, 1) it is column-major n × k (N).
    let wst = w.meta.strides();
    let (transa, lda) = if (wst[0] == 1 || k == 1) && wst[1] >= k {
        (sys::cublasOperation_t::CUBLAS_OP_T, wst[1])
    } else if (wst[1] == 1 || n == 1) && wst[0] >= n {
        (sys::cublasOperation_t::CUBLAS_OP_N, wst[0])
    } else {
        return None;
    };
    let out = empty_device_dtype(x.client.clone(), x.device.clone(), Shape::new([xs[0], xs[1], n]), x.dtype);
    // (The allocator may pitch `out`'s rows: its strides are read, not assumed.)
    let ldc = row_stride(out.meta.shape(), out.meta.strides())?;
    let int = |v: usize| c_int::try_from(v).ok();
    let (mi, ni, ki, lda, ldb, ldc) = (int(m)?, int(n)?, int(k)?, int(lda)?, int(ldb)?, int(ldc)?);
    let (alpha, beta) = (1.0f32, 0.0f32);
    let compute = compute_type(x.dtype);
    // SAFETY: the pointers are live CubeCL allocations, held until the stream has finished; shapes and
    // leading dimensions were checked against their strides above.
    ordered(client, ordinal, [&w.handle, &x.handle, &out.handle], |handle, [pw, px, po]| unsafe {
        blas::gemm_ex(
            handle,
            transa,
            sys::cublasOperation_t::CUBLAS_OP_N,
            ni,
            mi,
            ki,
            &alpha as *const f32 as *const c_void,
            pw,
            data_type,
            lda,
            px,
            data_type,
            ldb,
            &beta as *const f32 as *const c_void,
            po,
            data_type,
            ldc,
            compute,
            sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    })?;
    Some(out)
}

/// A `[batch, rows, cols]` tensor's (batch stride, row stride) where its rows are unit-stride and
/// do not overlap; a batch of one may have any batch stride.
fn batched_strides(shape: &[usize], strides: &[usize]) -> Option<(usize, usize)> {
    let [batch, rows, cols] = [shape[0], shape[1], shape[2]];
    if strides[2] != 1 && cols > 1 {
        return None;
    }
    let rs = if rows == 1 { cols.max(1) } else { strides[1] };
    let bs = if batch == 1 { rows * rs } else { strides[0] };
    (rs >= cols && (batch == 1 || bs >= rows * rs)).then_some((bs, rs))
}

/// `alpha · a_i · b_i` for every `i` of a batch (`b_i` transposed when `trans_b`), row-major operands
/// of one dtype (f32, bf16 or f16; f32 accumulation, no TF32): `a` `[batch, m, k]`, `b` `[batch, k, n]`
/// or `[batch, n, k]`, into a new `[batch, m, n]` of `out_dtype` (`a`'s dtype or f32). Strided views
/// whose rows are unit-stride (a narrowed cache) are read in place. One cuBLAS strided batched GEMM;
/// `None`, having launched nothing, where [`linear`] would return `None`.
pub fn batched_matmul<R: CubeRuntime>(
    a: &CubeTensor<R>,
    b: &CubeTensor<R>,
    trans_b: bool,
    alpha: f32,
    out_dtype: DType,
) -> Option<CubeTensor<R>> {
    let client = (&a.client as &dyn Any).downcast_ref::<ComputeClient<CudaRuntime>>()?;
    let ordinal = (&a.device as &dyn Any).downcast_ref::<CudaDevice>()?.index;
    let (in_type, out_type) = (cuda_type(a.dtype)?, cuda_type(out_dtype)?);
    let (ash, bsh) = (a.meta.shape(), b.meta.shape());
    if ash.len() != 3 || bsh.len() != 3 || b.dtype != a.dtype || (out_dtype != a.dtype && out_dtype != DType::F32) {
        return None;
    }
    let (batch, m, k) = (ash[0], ash[1], ash[2]);
    let (bk, n) = if trans_b { (bsh[2], bsh[1]) } else { (bsh[1], bsh[2]) };
    if bsh[0] != batch || bk != k || batch == 0 || m == 0 || n == 0 || k == 0 {
        return None;
    }
    let (abs, ars) = batched_strides(ash, a.meta.strides())?;
    let (bbs, brs) = batched_strides(bsh, b.meta.strides())?;
    let out = empty_device_dtype(a.client.clone(), a.device.clone(), Shape::new([batch, m, n]), out_dtype);
    let (obs, ors) = batched_strides(out.meta.shape(), out.meta.strides())?;
    // Column-major: outᵀ (n × m) = bᵀ (n × k) · aᵀ (k × m). A row-major `[k, n]` b is column-major
    // n × k as stored (N); a row-major `[n, k]` b is column-major k × n (T).
    let transa = if trans_b { sys::cublasOperation_t::CUBLAS_OP_T } else { sys::cublasOperation_t::CUBLAS_OP_N };
    let int = |v: usize| c_int::try_from(v).ok();
    let long = |v: usize| c_longlong::try_from(v).ok();
    let (mi, ni, ki, lda, ldb, ldc, count) = (int(m)?, int(n)?, int(k)?, int(brs)?, int(ars)?, int(ors)?, int(batch)?);
    let (sa, sb, sc) = (long(bbs)?, long(abs)?, long(obs)?);
    let (alpha, beta) = (alpha, 0.0f32);
    let compute = compute_type(a.dtype);
    // SAFETY: as in `linear`: live allocations held until the stream is done; shapes, leading
    // dimensions and batch strides checked against the tensors' strides above.
    ordered(client, ordinal, [&b.handle, &a.handle, &out.handle], |handle, [pb, pa, po]| unsafe {
        blas::gemm_strided_batched_ex(
            handle,
            transa,
            sys::cublasOperation_t::CUBLAS_OP_N,
            ni,
            mi,
            ki,
            &alpha as *const f32 as *const c_void,
            pb,
            in_type,
            lda,
            sa,
            pa,
            in_type,
            ldb,
            sb,
            &beta as *const f32 as *const c_void,
            po,
            out_type,
            ldc,
            sc,
            count,
            compute,
            sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    })?;
    Some(out)
}
