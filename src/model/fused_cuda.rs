//! The GPU twins of the fused training ops of [`super::fused`]: RMSNorm with a frozen weight,
//! rotate-half RoPE by per-row tables, the masked attention softmax and SwiGLU, each one kernel
//! forward and one backward, in f32 or bf16 (computing in f32).
//!
//! Off the CPU the training pass otherwise composes these from candle operations: ~9 kernels
//! forward and ~25 backward per RMSNorm, ~8 and ~20 per rotation, ~7 and ~15 per softmax
//! (estimates from the composed graphs), about 40% of a training step's ~10 000 kernel launches at
//! SmolLM2's 30 layers; a step on an H200 is bound by launching (host CPU time per step ≈ wall
//! time, measured). The CPU ops in `fused.rs` are the
//! references; `parity` checks these against them on a GPU (logits and LoRA gradients against the
//! CPU in f32). `TUNELAB_CUDA_FUSED=0` turns them off, to compare.
//!
//! The kernels are compiled from the source below by NVRTC on first use; bf16 is handled as raw
//! 16-bit words (no CUDA headers needed).

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::cudarc::nvrtc;
use candle_core::{CudaStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Storage, Tensor};

const SOURCE: &str = r#"
__device__ __forceinline__ float ld(const float* p, unsigned int i) { return p[i]; }
__device__ __forceinline__ float ld(const unsigned short* p, unsigned int i) {
    return __uint_as_float(((unsigned int)p[i]) << 16);
}
__device__ __forceinline__ void st(float* p, unsigned int i, float v) { p[i] = v; }
__device__ __forceinline__ void st(unsigned short* p, unsigned int i, float v) {
    unsigned int u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) { p[i] = 0x7fc0; return; }
    u += 0x7fffu + ((u >> 16) & 1u);   // round to nearest even
    p[i] = (unsigned short)(u >> 16);
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024).
__device__ float block_sum(float v, float* shared) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    int warps = blockDim.x >> 5;
    v = (threadIdx.x < warps) ? shared[threadIdx.x] : 0.0f;
    if (warp == 0) for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (threadIdx.x == 0) shared[0] = v;
    __syncthreads();
    return shared[0];
}

// y = x / sqrt(mean(x^2) + eps) * w, one block per row of n.
template <typename T>
__device__ void rms_norm(const T* x, const T* w, T* y, unsigned int n, float eps) {
    __shared__ float shared[32];
    const unsigned int base = blockIdx.x * n;
    float s = 0.0f;
    for (unsigned int i = threadIdx.x; i < n; i += blockDim.x) { float v = ld(x, base + i); s += v * v; }
    float r = rsqrtf(block_sum(s, shared) / n + eps);
    for (unsigned int i = threadIdx.x; i < n; i += blockDim.x) st(y, base + i, ld(x, base + i) * r * ld(w, i));
}

// dx = r (g w) - x r^3 mean(g w x), r = 1/sqrt(mean(x^2) + eps).
template <typename T>
__device__ void rms_norm_bwd(const T* x, const T* g, const T* w, T* dx, unsigned int n, float eps) {
    __shared__ float shared[32];
    const unsigned int base = blockIdx.x * n;
    float s = 0.0f, d = 0.0f;
    for (unsigned int i = threadIdx.x; i < n; i += blockDim.x) {
        float xv = ld(x, base + i);
        s += xv * xv;
        d += ld(g, base + i) * ld(w, i) * xv;
    }
    float ms = block_sum(s, shared) / n;
    float dot = block_sum(d, shared) / n;
    float r = rsqrtf(ms + eps);
    float r3 = r * r * r;
    for (unsigned int i = threadIdx.x; i < n; i += blockDim.x) {
        float xv = ld(x, base + i);
        st(dx, base + i, r * ld(g, base + i) * ld(w, i) - xv * r3 * dot);
    }
}

// Rotate-half RoPE of x (rows of d) by table row tr(row): one thread per pair (row, i < d/2).
// rows_per_table = T; heads = H; per_batch: tables hold B*T rows (else T rows).
template <typename T>
__device__ void rope(const T* x, const T* cos, const T* sin, T* y, unsigned int pairs,
                     unsigned int half, unsigned int t, unsigned int heads, int per_batch, float sign) {
    unsigned int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= pairs) return;
    unsigned int row = k / half, i = k % half;
    unsigned int tr = per_batch ? (row / (t * heads)) * t + row % t : row % t;
    float c = ld(cos, tr * half + i), s = sign * ld(sin, tr * half + i);
    unsigned int a = row * 2 * half + i, b = a + half;
    float xa = ld(x, a), xb = ld(x, b);
    st(y, a, xa * c - xb * s);
    st(y, b, xb * c + xa * s);
}

// softmax(x * scale + mask) per row of s; the mask row is mr(row) as the rope tables' rows.
template <typename T>
__device__ void masked_softmax(const T* x, const T* mask, T* y, unsigned int s, float scale,
                               unsigned int t, unsigned int heads, int per_batch) {
    __shared__ float shared[32];
    const unsigned int row = blockIdx.x, base = row * s;
    const unsigned int mr = per_batch ? (row / (t * heads)) * t + row % t : row % t;
    float mx = -3.0e38f;
    for (unsigned int i = threadIdx.x; i < s; i += blockDim.x)
        mx = fmaxf(mx, ld(x, base + i) * scale + ld(mask, mr * s + i));
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    __syncthreads();
    if ((threadIdx.x & 31) == 0) shared[threadIdx.x >> 5] = mx;
    __syncthreads();
    mx = shared[0];
    for (unsigned int w = 1; w < (blockDim.x >> 5); w++) mx = fmaxf(mx, shared[w]);
    float sum = 0.0f;
    for (unsigned int i = threadIdx.x; i < s; i += blockDim.x)
        sum += __expf(ld(x, base + i) * scale + ld(mask, mr * s + i) - mx);
    float inv = 1.0f / block_sum(sum, shared);
    for (unsigned int i = threadIdx.x; i < s; i += blockDim.x)
        st(y, base + i, __expf(ld(x, base + i) * scale + ld(mask, mr * s + i) - mx) * inv);
}

// d = scale * y * (g - sum(g y)) per row of s.
template <typename T>
__device__ void softmax_bwd(const T* y, const T* g, T* d, unsigned int s, float scale) {
    __shared__ float shared[32];
    const unsigned int base = blockIdx.x * s;
    float dot = 0.0f;
    for (unsigned int i = threadIdx.x; i < s; i += blockDim.x) dot += ld(y, base + i) * ld(g, base + i);
    dot = block_sum(dot, shared);
    for (unsigned int i = threadIdx.x; i < s; i += blockDim.x)
        st(d, base + i, scale * ld(y, base + i) * (ld(g, base + i) - dot));
}

// y = silu(gate) * up; backward (dgate, dup) into one buffer of 2n.
__device__ __forceinline__ float sigmoid(float v) { return 1.0f / (1.0f + __expf(-v)); }
template <typename T>
__device__ void swiglu(const T* gate, const T* up, T* y, unsigned int n) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = ld(gate, i);
    st(y, i, g * sigmoid(g) * ld(up, i));
}
template <typename T>
__device__ void swiglu_bwd(const T* gate, const T* up, const T* grad, T* out, unsigned int n) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = ld(gate, i), sg = sigmoid(g), d = ld(grad, i);
    st(out, i, d * ld(up, i) * sg * (1.0f + g * (1.0f - sg)));
    st(out, n + i, d * g * sg);
}

#define EXPORT(T, S) \
extern "C" __global__ void tunelab_masked_softmax_##S(const T* x, const T* m, T* y, unsigned int s, float scale, unsigned int t, unsigned int heads, int per_batch) { masked_softmax<T>(x, m, y, s, scale, t, heads, per_batch); } \
extern "C" __global__ void tunelab_softmax_bwd_##S(const T* y, const T* g, T* d, unsigned int s, float scale) { softmax_bwd<T>(y, g, d, s, scale); } \
extern "C" __global__ void tunelab_swiglu_##S(const T* gate, const T* up, T* y, unsigned int n) { swiglu<T>(gate, up, y, n); } \
extern "C" __global__ void tunelab_swiglu_bwd_##S(const T* gate, const T* up, const T* g, T* out, unsigned int n) { swiglu_bwd<T>(gate, up, g, out, n); } \
extern "C" __global__ void tunelab_rms_norm_##S(const T* x, const T* w, T* y, unsigned int n, float eps) { rms_norm<T>(x, w, y, n, eps); } \
extern "C" __global__ void tunelab_rms_norm_bwd_##S(const T* x, const T* g, const T* w, T* dx, unsigned int n, float eps) { rms_norm_bwd<T>(x, g, w, dx, n, eps); } \
extern "C" __global__ void tunelab_rope_##S(const T* x, const T* c, const T* s, T* y, unsigned int pairs, unsigned int half, unsigned int t, unsigned int heads, int per_batch, float sign) { rope<T>(x, c, s, y, pairs, half, t, heads, per_batch, sign); }

EXPORT(float, f32)
EXPORT(unsigned short, bf16)
"#;

const MODULE: &str = "tunelab_fused";

/// Whether the fused kernels serve `x`: a CUDA f32/bf16 tensor, unless `TUNELAB_CUDA_FUSED=0`.
pub fn applies(x: &Tensor) -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    let on = *ON.get_or_init(|| std::env::var_os("TUNELAB_CUDA_FUSED").is_none_or(|v| v != "0"));
    on && x.device().is_cuda() && matches!(x.dtype(), DType::F32 | DType::BF16) && ptx().is_ok()
}

fn ptx() -> &'static Result<String, String> {
    static PTX: OnceLock<Result<String, String>> = OnceLock::new();
    PTX.get_or_init(|| {
        let compiled = nvrtc::compile_ptx(SOURCE)
            .map(|p| p.to_src())
            .map_err(|e| e.to_string());
        if let Err(e) = &compiled {
            eprintln!("warning: tunelab's fused CUDA kernels did not compile ({e}); composing the ops instead");
        }
        compiled
    })
}

fn suffix(dtype: DType) -> candle_core::Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::BF16 => Ok("bf16"),
        other => candle_core::bail!("fused CUDA kernels: {other:?} is not supported"),
    }
}

/// The CPU side of these ops: they exist only on CUDA (the CPU has its own fused ops).
fn cuda_only<T>(op: &str) -> candle_core::Result<T> {
    candle_core::bail!("{op} runs on CUDA only")
}

/// Every input of `op` is contiguous from offset 0 and of one dtype.
fn check_inputs(op: &str, inputs: &[(&CudaStorage, &Layout)]) -> candle_core::Result<()> {
    for (s, l) in inputs {
        if !l.is_contiguous() || l.start_offset() != 0 {
            candle_core::bail!("{op}: inputs must be contiguous");
        }
        if s.dtype() != inputs[0].0.dtype() {
            candle_core::bail!("{op}: inputs differ in dtype");
        }
    }
    Ok(())
}

/// The CUDA storage of a contiguous tensor with no offset, or an error naming `what`.
fn cuda_of<'a>(s: &'a Storage, l: &Layout, what: &str) -> candle_core::Result<&'a CudaStorage> {
    match s {
        Storage::Cuda(c) if l.is_contiguous() && l.start_offset() == 0 => Ok(c),
        _ => candle_core::bail!("fused CUDA kernels: {what} must be a contiguous CUDA tensor"),
    }
}

/// A scalar kernel argument.
enum Scalar {
    U32(u32),
    I32(i32),
    F32(f32),
}

/// Launch `kernel` over `inputs` (contiguous, one dtype) into a new buffer of `out_len`
/// elements, followed by the `scalars`.
fn launch(
    kernel: &str,
    inputs: &[&CudaStorage],
    out_len: usize,
    cfg: LaunchConfig,
    scalars: &[Scalar],
) -> candle_core::Result<CudaStorage> {
    let dtype = inputs[0].dtype();
    let name = format!("{kernel}_{}", suffix(dtype)?);
    let ptx = ptx()
        .as_ref()
        .map_err(|e| candle_core::Error::Msg(e.clone()))?;
    let dev = inputs[0].device.clone();
    let func = dev.get_or_load_custom_func(&name, MODULE, ptx)?;
    macro_rules! run {
        ($t:ty) => {{
            // SAFETY: every element is written by the kernel before it is read.
            let out = unsafe { dev.alloc::<$t>(out_len)? };
            let mut b = func.builder();
            for s in inputs {
                b.arg(s.as_cuda_slice::<$t>()?);
            }
            b.arg(&out);
            for s in scalars {
                match s {
                    Scalar::U32(v) => b.arg(v),
                    Scalar::I32(v) => b.arg(v),
                    Scalar::F32(v) => b.arg(v),
                };
            }
            // SAFETY: the kernels index inside the buffers whose sizes the callers checked.
            unsafe { b.launch(cfg) }
                .map_err(|e| candle_core::Error::Msg(format!("{name}: {e}")))?;
            out
        }};
    }
    Ok(match dtype {
        DType::F32 => candle_core::cuda_backend::CudaStorage::wrap_cuda_slice(run!(f32), dev),
        _ => candle_core::cuda_backend::CudaStorage::wrap_cuda_slice(run!(half::bf16), dev),
    })
}

fn row_cfg(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// RMSNorm of x (…, n) by the frozen weight (n) in x's dtype.
struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "cuda-fused-rms-norm"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        cuda_only(self.name())
    }

    fn cuda_fwd(&self, x: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let n = self.weight.elem_count();
        let (ws, wl) = self.weight.storage_and_layout();
        let w = cuda_of(&ws, wl, "the norm weight")?;
        check_inputs(self.name(), &[(x, l)])?;
        let len = l.shape().elem_count();
        let eps = self.eps;
        let y = launch(
            "tunelab_rms_norm",
            &[x, w],
            len,
            row_cfg(len / n),
            &[Scalar::U32(n as u32), Scalar::F32(eps)],
        )?;
        Ok((y, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let back = RmsNormBackward {
            weight: self.weight.clone(),
            eps: self.eps,
        };
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &back)?))
    }
}

struct RmsNormBackward {
    weight: Tensor,
    eps: f32,
}

impl CustomOp2 for RmsNormBackward {
    fn name(&self) -> &'static str {
        "cuda-fused-rms-norm-backward"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        cuda_only(self.name())
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        g: &CudaStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let n = self.weight.elem_count();
        let (ws, wl) = self.weight.storage_and_layout();
        let w = cuda_of(&ws, wl, "the norm weight")?;
        check_inputs(self.name(), &[(x, xl), (g, gl)])?;
        let len = xl.shape().elem_count();
        let eps = self.eps;
        let dx = launch(
            "tunelab_rms_norm_bwd",
            &[x, g, w],
            len,
            row_cfg(len / n),
            &[Scalar::U32(n as u32), Scalar::F32(eps)],
        )?;
        Ok((dx, xl.shape().clone()))
    }
}

/// RMSNorm of `x` (…, n) by the frozen `w` (n), fused on a GPU; x is made contiguous.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> candle_core::Result<Tensor> {
    let op = RmsNorm {
        weight: w.to_dtype(x.dtype())?.contiguous()?,
        eps,
    };
    x.contiguous()?.apply_op1(op)
}

/// Rotate-half RoPE by tables (rows, d/2), rows = T or B·T.
struct Rope {
    cos: Tensor,
    sin: Tensor,
    t: usize,
    heads: usize,
    per_batch: bool,
    inverse: bool,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "cuda-fused-rope"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        cuda_only(self.name())
    }

    fn cuda_fwd(&self, x: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        check_inputs(self.name(), &[(x, l)])?;
        let (cs, cl) = self.cos.storage_and_layout();
        let (ss, sl) = self.sin.storage_and_layout();
        let (c, s) = (cuda_of(&cs, cl, "cos")?, cuda_of(&ss, sl, "sin")?);
        let d = l.shape().dims()[l.shape().rank() - 1];
        let half = d / 2;
        let len = l.shape().elem_count();
        let pairs = (len / 2) as u32;
        let (t, heads, per_batch) = (self.t as u32, self.heads as u32, self.per_batch as i32);
        let sign: f32 = if self.inverse { -1.0 } else { 1.0 };
        let y = launch(
            "tunelab_rope",
            &[x, c, s],
            len,
            LaunchConfig::for_num_elems(pairs),
            &[
                Scalar::U32(pairs),
                Scalar::U32(half as u32),
                Scalar::U32(t),
                Scalar::U32(heads),
                Scalar::I32(per_batch),
                Scalar::F32(sign),
            ],
        )?;
        Ok((y, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let back = Rope {
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            t: self.t,
            heads: self.heads,
            per_batch: self.per_batch,
            inverse: !self.inverse,
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&back)?))
    }
}

/// RoPE (rotate-half) of x (B, H, T, D) by tables that hold T or B·T rows of D/2, fused on a GPU.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let (b, h, t, d) = x.dims4()?;
    let rows = cos.elem_count() / (d / 2);
    if rows != t && rows != b * t {
        candle_core::bail!("cuda-fused-rope: tables of {rows} rows for {b}×{t} positions");
    }
    let table =
        |x2: &Tensor| -> candle_core::Result<Tensor> { x2.to_dtype(x.dtype())?.contiguous() };
    x.contiguous()?.apply_op1(Rope {
        cos: table(cos)?,
        sin: table(sin)?,
        t,
        heads: h,
        per_batch: rows == b * t && b > 1,
        inverse: false,
    })
}

/// `softmax(scores · scale + mask)` over the last dimension; mask rows as the rope tables'.
struct MaskedSoftmax {
    mask: Tensor,
    scale: f32,
    t: usize,
    heads: usize,
    per_batch: bool,
}

impl CustomOp1 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "cuda-fused-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        cuda_only(self.name())
    }

    fn cuda_fwd(&self, x: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        check_inputs(self.name(), &[(x, l)])?;
        let (ms, ml) = self.mask.storage_and_layout();
        let mask = cuda_of(&ms, ml, "the mask")?;
        let s = l.shape().dims()[l.shape().rank() - 1];
        let len = l.shape().elem_count();
        let y = launch(
            "tunelab_masked_softmax",
            &[x, mask],
            len,
            row_cfg(len / s),
            &[
                Scalar::U32(s as u32),
                Scalar::F32(self.scale),
                Scalar::U32(self.t as u32),
                Scalar::U32(self.heads as u32),
                Scalar::I32(self.per_batch as i32),
            ],
        )?;
        Ok((y, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let back = SoftmaxBackward { scale: self.scale };
        Ok(Some(y.apply_op2_no_bwd(&grad.contiguous()?, &back)?))
    }
}

/// d = scale · y ∘ (g − Σ g∘y), row by row.
struct SoftmaxBackward {
    scale: f32,
}

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "cuda-fused-masked-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        cuda_only(self.name())
    }

    fn cuda_fwd(
        &self,
        y: &CudaStorage,
        yl: &Layout,
        g: &CudaStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        check_inputs(self.name(), &[(y, yl), (g, gl)])?;
        let s = yl.shape().dims()[yl.shape().rank() - 1];
        let len = yl.shape().elem_count();
        let d = launch(
            "tunelab_softmax_bwd",
            &[y, g],
            len,
            row_cfg(len / s),
            &[Scalar::U32(s as u32), Scalar::F32(self.scale)],
        )?;
        Ok((d, yl.shape().clone()))
    }
}

/// `softmax(scores · scale + mask)`: scores (B, H, T, S), mask (Bm, 1, T, S) with Bm ∈ {1, B}.
pub fn masked_softmax(scores: &Tensor, scale: f64, mask: &Tensor) -> candle_core::Result<Tensor> {
    let (b, h, t, s) = scores.dims4()?;
    let (bm, _, mt, ms) = mask.dims4()?;
    if (bm != 1 && bm != b) || mt != t || ms != s {
        candle_core::bail!(
            "cuda-fused-masked-softmax: mask {:?} for scores {:?}",
            mask.dims(),
            scores.dims()
        );
    }
    scores.contiguous()?.apply_op1(MaskedSoftmax {
        mask: mask.to_dtype(scores.dtype())?.contiguous()?,
        scale: scale as f32,
        t,
        heads: h,
        per_batch: bm == b && b > 1,
    })
}

/// `silu(gate) · up`.
struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "cuda-fused-swiglu"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        cuda_only(self.name())
    }

    fn cuda_fwd(
        &self,
        gate: &CudaStorage,
        gl: &Layout,
        up: &CudaStorage,
        ul: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        check_inputs(self.name(), &[(gate, gl), (up, ul)])?;
        let n = gl.shape().elem_count();
        let y = launch(
            "tunelab_swiglu",
            &[gate, up],
            n,
            LaunchConfig::for_num_elems(n as u32),
            &[Scalar::U32(n as u32)],
        )?;
        Ok((y, gl.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let both = gate.apply_op3_no_bwd(up, &grad.contiguous()?, &SwiGluBackward)?; // (2, …)
        Ok((Some(both.get(0)?), Some(both.get(1)?)))
    }
}

/// (d gate, d up) = (g · up · silu'(gate), g · silu(gate)), stacked.
struct SwiGluBackward;

impl candle_core::CustomOp3 for SwiGluBackward {
    fn name(&self) -> &'static str {
        "cuda-fused-swiglu-backward"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        cuda_only(self.name())
    }

    fn cuda_fwd(
        &self,
        gate: &CudaStorage,
        gl: &Layout,
        up: &CudaStorage,
        ul: &Layout,
        g: &CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        check_inputs(self.name(), &[(gate, gl), (up, ul), (g, l3)])?;
        let n = gl.shape().elem_count();
        let out = launch(
            "tunelab_swiglu_bwd",
            &[gate, up, g],
            2 * n,
            LaunchConfig::for_num_elems(n as u32),
            &[Scalar::U32(n as u32)],
        )?;
        let mut dims = vec![2];
        dims.extend(gl.shape().dims());
        Ok((out, Shape::from(dims)))
    }
}

/// `silu(gate) · up`, fused on a GPU.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    gate.contiguous()?
        .apply_op2(&up.to_dtype(gate.dtype())?.contiguous()?, SwiGlu)
}
