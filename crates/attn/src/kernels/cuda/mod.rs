//! The CUDA backend: the engine's operations over buffers on an NVIDIA GPU, with the CPU
//! backend's shapes and layouts (see [`crate::kernels`]), so that each can be checked
//! against its CPU twin and model code can hand the same arguments to either.
//!
//! **Found at run time.** The driver, NVRTC and cuBLAS are opened with `dlopen`
//! ([`ffi`]): a plain `cargo build` needs no CUDA, and [`Gpu::open`] on a machine without
//! one returns an error that names what is missing. **Kernels compiled at run time**:
//! `kernels.cu` is compiled by NVRTC for the architecture of the GPU found (`sm_90` on a
//! Hopper), once per process, instead of PTX embedded at build time, which would need
//! `nvcc` on every machine that builds attn and would pin the code to the architectures
//! named then. Matrix products go through cuBLAS in its default (IEEE f32) mode, so f32
//! results match the CPU engine to rounding; [`Gpu::gemm_bf16`] is the bf16 path.
//!
//! Every operation is queued on the device's default stream in call order; a download
//! waits for what came before it. Errors from a kernel surface at the next download or
//! [`Gpu::sync`].
//!
//! Why one file of this length: [`Gpu`]'s methods are the backend's list of operations,
//! one each for every CPU kernel it mirrors, each a few lines of shape checks and launch
//! arithmetic over the device's private state (the compiled module, the cuBLAS handle,
//! scratch slots); the kernels themselves are in `kernels.cu`, the loading in `ffi.rs`.

mod ffi;

use std::collections::HashMap;
use std::ffi::{c_int, c_void, CString};
use std::marker::PhantomData;
use std::sync::OnceLock;

use ffi::{Api, CUcontext, CUdeviceptr, CUfunction};

use super::cpu::{Dropout, Heads, RopeTable};
use crate::{Error, Result};

const SOURCE: &str = include_str!("kernels.cu");

fn err(what: &str, message: impl std::fmt::Display) -> Error {
    Error::Device(format!("{what}: {message}"))
}

fn check(api: &Api, r: ffi::CUresult, what: &str) -> Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(err(what, ffi::error_string(&api.cu, r)))
    }
}

/// How cuBLAS is given a row-major operand `op(x)` of shape `[rows, cols]`, stored as
/// is or (with `t`) transposed, `[cols, rows]`: the operation and the stored row length
/// (leading dimension). cuBLAS is column-major, so `c = op(a)·op(b)` is given as
/// `cᵀ = op(b)ᵀ·op(a)ᵀ`, b first, each stored array read as its own transpose.
fn blas_operand(t: bool, rows: usize, cols: usize) -> (c_int, usize) {
    if t {
        (ffi::CUBLAS_OP_T, rows)
    } else {
        (ffi::CUBLAS_OP_N, cols)
    }
}

fn check_blas(r: c_int, what: &str) -> Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(err(what, format!("cuBLAS status {r}")))
    }
}

/// One GPU as [`devices`] lists it.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub memory: usize,
    /// Compute capability (major, minor).
    pub capability: (i32, i32),
    pub multiprocessors: i32,
}

/// The CUDA GPUs of this machine, or why there are none (the driver or a library
/// missing, or no device).
pub fn devices() -> Result<Vec<DeviceInfo>> {
    let api = Api::get().map_err(|e| err("CUDA", e))?;
    let mut n = 0;
    // SAFETY: writes one int.
    check(
        api,
        unsafe { (api.cu.cuDeviceGetCount)(&mut n) },
        "cuDeviceGetCount",
    )?;
    (0..n as usize).map(|i| info(api, i)).collect()
}

fn info(api: &Api, ordinal: usize) -> Result<DeviceInfo> {
    let mut dev = 0;
    // SAFETY (all calls): each writes the value asked for into a local of its type.
    unsafe {
        check(
            api,
            (api.cu.cuDeviceGet)(&mut dev, ordinal as c_int),
            "cuDeviceGet",
        )?;
        let mut name = [0 as std::ffi::c_char; 256];
        check(
            api,
            (api.cu.cuDeviceGetName)(name.as_mut_ptr(), 256, dev),
            "cuDeviceGetName",
        )?;
        let mut memory = 0usize;
        check(
            api,
            (api.cu.cuDeviceTotalMem_v2)(&mut memory, dev),
            "cuDeviceTotalMem",
        )?;
        let attr = |a| {
            let mut v = 0;
            check(
                api,
                (api.cu.cuDeviceGetAttribute)(&mut v, a, dev),
                "cuDeviceGetAttribute",
            )
            .map(|_| v)
        };
        Ok(DeviceInfo {
            ordinal,
            name: std::ffi::CStr::from_ptr(name.as_ptr())
                .to_string_lossy()
                .into_owned(),
            memory,
            capability: (attr(ffi::ATTR_CC_MAJOR)?, attr(ffi::ATTR_CC_MINOR)?),
            multiprocessors: attr(ffi::ATTR_MULTIPROCESSORS)?,
        })
    }
}

/// The arithmetic of the matrix products (everything else is f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// IEEE f32: the CPU engine's results to rounding.
    F32,
    /// f32 operands rounded to TF32 (10-bit mantissas) on the tensor cores, f32 sums.
    Tf32,
    /// Operands rounded to bf16 (8-bit mantissas) on the tensor cores, f32 sums and
    /// results; weights, gradients and optimizer state stay f32 (mixed precision).
    Bf16,
}

impl Precision {
    /// `f32`, `tf32` or `bf16`; `auto` is bf16 on GPUs with bf16 tensor cores (compute
    /// capability 8.0 and later) and f32 on others.
    pub fn parse(s: &str, gpu: &Gpu) -> Result<Precision> {
        Ok(match s {
            "f32" => Precision::F32,
            "tf32" => Precision::Tf32,
            "bf16" => Precision::Bf16,
            "auto" if gpu.info().capability.0 >= 8 => Precision::Bf16,
            "auto" => Precision::F32,
            _ => {
                return Err(Error::invalid(
                    "--dtype",
                    format!("{s:?}: expected auto, f32, tf32 or bf16"),
                ))
            }
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// Where a command runs, as `--device` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// A CUDA GPU when one is found (GPU 0), else the CPU.
    Auto,
    Cpu,
    /// CUDA GPU `n` (`cuda` is `cuda:0`); an error when there is none.
    Cuda(usize),
}

impl Device {
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub fn parse(s: &str) -> Result<Device> {
        let bad = || {
            Error::invalid(
                "--device",
                format!("{s:?}: expected auto, cpu, cuda or cuda:N (N a GPU number)"),
            )
        };
        Ok(match s {
            "auto" => Device::Auto,
            "cpu" => Device::Cpu,
            "cuda" | "gpu" => Device::Cuda(0),
            _ => Device::Cuda(
                s.strip_prefix("cuda:")
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(bad)?,
            ),
        })
    }

    /// The GPU to run on: `None` for the CPU (asked for, or `auto` finding no GPU);
    /// `cuda` without a usable GPU is an error saying why. `auto` says on stderr why a
    /// GPU that the driver lists cannot be used (NVRTC or cuBLAS missing, say): the
    /// user expected it to be.
    pub fn open(self) -> Result<Option<Gpu>> {
        match self {
            Device::Cpu => Ok(None),
            Device::Cuda(n) => Gpu::open(n).map(Some),
            Device::Auto => match Gpu::open(0) {
                Ok(g) => Ok(Some(g)),
                Err(e) => {
                    if devices().is_ok_and(|d| !d.is_empty()) {
                        eprintln!("not using the GPU ({e}); running on the CPU");
                    }
                    Ok(None)
                }
            },
        }
    }
}

impl std::str::FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Device> {
        Device::parse(s)
    }
}

/// Versions of the driver, NVRTC and cuBLAS found, for logs.
pub fn versions() -> Result<String> {
    let api = Api::get().map_err(|e| err("CUDA", e))?;
    let (mut d, mut a, mut b) = (0, 0, 0);
    // SAFETY: each writes ints.
    unsafe {
        (api.cu.cuDriverGetVersion)(&mut d);
        (api.rtc.nvrtcVersion)(&mut a, &mut b);
    }
    Ok(format!(
        "driver API {}.{}, NVRTC {a}.{b}",
        d / 1000,
        (d % 1000) / 10
    ))
}

/// A buffer of `len` values of `T` in device memory, freed when dropped.
pub struct Buf<T> {
    ptr: CUdeviceptr,
    len: usize,
    ctx: CUcontext,
    /// Freed on drop (a [`View`] or a scratch buffer is not).
    owned: bool,
    _t: PhantomData<T>,
}

/// Part of a [`Buf`], usable wherever a buffer is (it derefs to one), borrowing the
/// buffer it was cut from.
pub struct View<'a, T> {
    buf: Buf<T>,
    _of: PhantomData<&'a Buf<T>>,
}

impl<T> std::ops::Deref for View<'_, T> {
    type Target = Buf<T>;
    fn deref(&self) -> &Buf<T> {
        &self.buf
    }
}

impl<T> Buf<T> {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Values `off..off + len`.
    pub fn view(&self, off: usize, len: usize) -> View<'_, T> {
        assert!(
            off + len <= self.len,
            "view {off}+{len} of a buffer of {}",
            self.len
        );
        View {
            buf: Buf {
                ptr: self.at(off),
                len,
                ctx: self.ctx,
                owned: false,
                _t: PhantomData,
            },
            _of: PhantomData,
        }
    }
    /// The device address of element `i` (for the kernels' arguments).
    fn at(&self, i: usize) -> CUdeviceptr {
        debug_assert!(i <= self.len);
        self.ptr + (i * std::mem::size_of::<T>()) as u64
    }
}

impl<T> Drop for Buf<T> {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        if let Ok(api) = Api::get() {
            // SAFETY: the context that allocated the buffer, and the buffer's own address.
            unsafe {
                (api.cu.cuCtxSetCurrent)(self.ctx);
                (api.cu.cuMemFree_v2)(self.ptr);
            }
        }
    }
}

/// One kernel argument, as the C type the kernel declares.
enum Arg {
    /// A device pointer (or null).
    P(u64),
    I(i32),
    L(i64),
    F(f32),
    U(u64),
}

/// An open GPU: its context, the compiled kernels and a cuBLAS handle.
pub struct Gpu {
    api: &'static Api,
    ctx: CUcontext,
    info: DeviceInfo,
    funcs: HashMap<String, CUfunction>,
    blas: ffi::cublasHandle_t,
    /// Scratch buffers of the operations, by slot, grown on demand and reused: the
    /// work is queued in order on one stream, so a later call's use of a slot waits
    /// for the earlier one's (and freeing one to grow it waits for the device).
    scratch: std::cell::RefCell<Vec<Option<Buf<f32>>>>,
    precision: std::cell::Cell<Precision>,
}

// SAFETY: the context and handles are plain identifiers the driver lets any thread use
// once the context is made current there, which every entry point does first.
unsafe impl Send for Gpu {}

/// The kernels' compiled code for one architecture, compiled once per process.
fn cubin(api: &Api, arch: (i32, i32)) -> Result<&'static [u8]> {
    type Cache = std::sync::Mutex<HashMap<(i32, i32), &'static [u8]>>;
    static CODE: OnceLock<Cache> = OnceLock::new();
    let mut map = CODE.get_or_init(Default::default).lock().unwrap();
    if let Some(code) = map.get(&arch) {
        return Ok(code);
    }
    let rtc = &api.rtc;
    let src = CString::new(SOURCE).unwrap();
    let name = CString::new("kernels.cu").unwrap();
    let mut prog: ffi::nvrtcProgram = std::ptr::null_mut();
    let rtc_err = |r: c_int, what: &str| {
        // SAFETY: NVRTC returns a static string.
        let s = unsafe { std::ffi::CStr::from_ptr((rtc.nvrtcGetErrorString)(r)) };
        err(what, s.to_string_lossy())
    };
    // SAFETY: NUL-terminated source and name; no headers.
    let r = unsafe {
        (rtc.nvrtcCreateProgram)(
            &mut prog,
            src.as_ptr(),
            name.as_ptr(),
            0,
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(rtc_err(r, "nvrtcCreateProgram"));
    }
    let opts = [
        format!("--gpu-architecture=sm_{}{}", arch.0, arch.1),
        "-std=c++17".into(),
    ];
    let opts: Vec<CString> = opts
        .iter()
        .map(|o| CString::new(o.as_str()).unwrap())
        .collect();
    let ptrs: Vec<*const std::ffi::c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    // SAFETY: the program just created and an array of NUL-terminated options.
    let r = unsafe { (rtc.nvrtcCompileProgram)(prog, ptrs.len() as c_int, ptrs.as_ptr()) };
    let mut log_len = 0usize;
    // SAFETY: the log's size, then the log into a buffer of that size.
    let log = unsafe {
        (rtc.nvrtcGetProgramLogSize)(prog, &mut log_len);
        let mut log = vec![0u8; log_len.max(1)];
        (rtc.nvrtcGetProgramLog)(prog, log.as_mut_ptr() as *mut _);
        String::from_utf8_lossy(&log[..log_len.saturating_sub(1)]).into_owned()
    };
    if r != 0 {
        // SAFETY: the program is destroyed once.
        unsafe { (rtc.nvrtcDestroyProgram)(&mut prog) };
        return Err(err(
            "compiling the CUDA kernels",
            format!("{}\n{log}", rtc_err(r, "nvrtc")),
        ));
    }
    let mut size = 0usize;
    let mut code = Vec::new();
    // SAFETY: the cubin's size, then the cubin into a buffer of that size.
    let r = unsafe {
        let r = (rtc.nvrtcGetCUBINSize)(prog, &mut size);
        if r == 0 {
            code.resize(size, 0u8);
            (rtc.nvrtcGetCUBIN)(prog, code.as_mut_ptr() as *mut _)
        } else {
            r
        }
    };
    // SAFETY: destroyed once.
    unsafe { (rtc.nvrtcDestroyProgram)(&mut prog) };
    if r != 0 {
        return Err(rtc_err(r, "nvrtcGetCUBIN"));
    }
    let code: &'static [u8] = Box::leak(code.into_boxed_slice());
    map.insert(arch, code);
    Ok(code)
}

/// The kernels `kernels.cu` defines (each looked up once when a GPU is opened).
const KERNELS: &[&str] = &[
    "add",
    "add_bias",
    "mul_into",
    "bias_gelu",
    "swiglu",
    "swiglu_bwd",
    "dropout",
    "layer_norm",
    "layer_norm_bwd_x",
    "layer_norm_bwd_wb",
    "col_sums",
    "sum_parts",
    "cross_entropy",
    "adamw",
    "sum_squares",
    "embed",
    "embed_bwd",
    "pos_bwd",
    "gather_heads",
    "scatter_heads",
    "causal_softmax",
    "softmax_bwd",
    "rope",
    "to_bf16",
];

/// Scratch slots (see [`Gpu::scratch`]).
const S_PART: usize = 0;
const S_LOSS: usize = 1;
const S_Q: usize = 2;
const S_K: usize = 3;
const S_V: usize = 4;
const S_DROPPED: usize = 5;
const S_YH: usize = 6;
const S_DP: usize = 7;
const S_DV: usize = 8;
const S_DQ: usize = 9;
const S_DK: usize = 10;
const S_HA: usize = 11;
const S_HB: usize = 12;

/// Threads per block of the elementwise kernels, and of the row kernels.
const THREADS: u32 = 256;

/// Blocks for `n` elements handled one per thread of a grid-stride loop (capped: the
/// loop covers the rest).
fn blocks(n: usize) -> u32 {
    n.div_ceil(THREADS as usize).clamp(1, 65_535 * 8) as u32
}

/// Rows summed by one block of a column reduction (so that a few hundred blocks run).
fn rows_per_block(m: usize) -> usize {
    m.div_ceil(64).max(1)
}

impl Gpu {
    /// Opens GPU `ordinal`: makes its primary context current, compiles the kernels
    /// (once per process and architecture) and creates a cuBLAS handle.
    pub fn open(ordinal: usize) -> Result<Gpu> {
        let api = Api::get().map_err(|e| err("CUDA", e))?;
        let list = devices()?;
        if list.is_empty() {
            return Err(err("CUDA", "the driver found no GPU"));
        }
        let info = list.get(ordinal).cloned().ok_or_else(|| {
            err(
                "CUDA",
                format!(
                    "there is no GPU {ordinal}: {} found (cuda:0 to cuda:{})",
                    list.len(),
                    list.len() - 1
                ),
            )
        })?;
        let mut dev = 0;
        let mut ctx: CUcontext = std::ptr::null_mut();
        // SAFETY: writes a device handle and a context handle.
        unsafe {
            check(
                api,
                (api.cu.cuDeviceGet)(&mut dev, ordinal as c_int),
                "cuDeviceGet",
            )?;
            check(
                api,
                (api.cu.cuDevicePrimaryCtxRetain)(&mut ctx, dev),
                "cuDevicePrimaryCtxRetain",
            )?;
            check(api, (api.cu.cuCtxSetCurrent)(ctx), "cuCtxSetCurrent")?;
        }
        let code = cubin(api, info.capability)?;
        let mut module = std::ptr::null_mut();
        // SAFETY: a complete cubin image.
        check(
            api,
            unsafe { (api.cu.cuModuleLoadData)(&mut module, code.as_ptr() as *const c_void) },
            "loading the kernels",
        )?;
        let mut funcs = HashMap::new();
        for name in KERNELS {
            let c = CString::new(*name).unwrap();
            let mut f = std::ptr::null_mut();
            // SAFETY: the module just loaded and a NUL-terminated name.
            check(
                api,
                unsafe { (api.cu.cuModuleGetFunction)(&mut f, module, c.as_ptr()) },
                name,
            )?;
            funcs.insert(name.to_string(), f);
        }
        let mut blas = std::ptr::null_mut();
        // SAFETY: writes a handle, bound to the current context.
        check_blas(
            unsafe { (api.blas.cublasCreate_v2)(&mut blas) },
            "cublasCreate",
        )?;
        Ok(Gpu {
            api,
            ctx,
            info,
            funcs,
            blas,
            scratch: Default::default(),
            precision: std::cell::Cell::new(Precision::F32),
        })
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The arithmetic of the matrix products from now on (f32 when opened).
    pub fn set_precision(&self, p: Precision) {
        self.precision.set(p);
    }

    pub fn precision(&self) -> Precision {
        self.precision.get()
    }

    fn bind(&self) -> Result<()> {
        // SAFETY: this GPU's context.
        check(
            self.api,
            unsafe { (self.api.cu.cuCtxSetCurrent)(self.ctx) },
            "cuCtxSetCurrent",
        )
    }

    /// Waits for everything queued, and reports the first error a kernel hit.
    pub fn sync(&self) -> Result<()> {
        self.bind()?;
        // SAFETY: no arguments.
        check(
            self.api,
            unsafe { (self.api.cu.cuCtxSynchronize)() },
            "a CUDA kernel",
        )
    }

    // ------------------------------------------------------------ memory

    /// `n` values of `T`, uninitialised; refused with an error (not an abort) when the
    /// device has not that much free.
    pub fn alloc<T>(&self, n: usize) -> Result<Buf<T>> {
        self.bind()?;
        let bytes = n
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| err("GPU memory", format!("{n} values overflow")))?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: writes two sizes.
        check(
            self.api,
            unsafe { (self.api.cu.cuMemGetInfo_v2)(&mut free, &mut total) },
            "cuMemGetInfo",
        )?;
        if bytes > free {
            return Err(err(
                "GPU memory",
                format!(
                    "{bytes} bytes asked for, {free} of {total} free on {}",
                    self.info.name
                ),
            ));
        }
        let mut ptr = 0;
        // SAFETY: writes one device address.
        check(
            self.api,
            unsafe { (self.api.cu.cuMemAlloc_v2)(&mut ptr, bytes.max(4)) },
            "cuMemAlloc",
        )?;
        Ok(Buf {
            ptr,
            len: n,
            ctx: self.ctx,
            owned: true,
            _t: PhantomData,
        })
    }

    /// Scratch slot `slot` with room for `n` f32 values (or `n / 2` f64), as a buffer
    /// that is not freed on drop; its contents are whatever the slot last held.
    fn scratch(&self, slot: usize, n: usize) -> Result<Buf<f32>> {
        let mut pool = self.scratch.borrow_mut();
        if pool.len() <= slot {
            pool.resize_with(slot + 1, || None);
        }
        if pool[slot].as_ref().is_none_or(|b| b.len < n) {
            pool[slot] = None; // free the smaller one first
            pool[slot] = Some(self.alloc::<f32>(n)?);
        }
        let b = pool[slot].as_ref().unwrap();
        Ok(Buf {
            ptr: b.ptr,
            len: n,
            ctx: self.ctx,
            owned: false,
            _t: PhantomData,
        })
    }

    /// `n` f32 zeros.
    pub fn zeros(&self, n: usize) -> Result<Buf<f32>> {
        let b = self.alloc::<f32>(n)?;
        // SAFETY: n words of the buffer just allocated.
        check(
            self.api,
            unsafe { (self.api.cu.cuMemsetD32_v2)(b.ptr, 0, n) },
            "cuMemsetD32",
        )?;
        Ok(b)
    }

    pub fn upload<T: Copy>(&self, data: &[T]) -> Result<Buf<T>> {
        let b = self.alloc::<T>(data.len())?;
        self.write(&b, data)?;
        Ok(b)
    }

    /// Copies `data` into the start of `b`.
    pub fn write<T: Copy>(&self, b: &Buf<T>, data: &[T]) -> Result<()> {
        assert!(
            data.len() <= b.len,
            "write of {} values into {}",
            data.len(),
            b.len
        );
        self.bind()?;
        // SAFETY: data.len() values fit in the buffer (asserted).
        check(
            self.api,
            unsafe {
                (self.api.cu.cuMemcpyHtoD_v2)(
                    b.ptr,
                    data.as_ptr() as *const c_void,
                    std::mem::size_of_val(data),
                )
            },
            "copying to the GPU",
        )
    }

    pub fn download<T: Copy + Default>(&self, b: &Buf<T>) -> Result<Vec<T>> {
        self.bind()?;
        let mut out = vec![T::default(); b.len];
        // SAFETY: the buffer's whole length into a host vector of that length.
        check(
            self.api,
            unsafe {
                (self.api.cu.cuMemcpyDtoH_v2)(
                    out.as_mut_ptr() as *mut c_void,
                    b.ptr,
                    std::mem::size_of_val(&out[..]),
                )
            },
            "copying from the GPU (or an earlier kernel failed)",
        )?;
        Ok(out)
    }

    /// Copies all of `src` into the start of `dst`.
    pub fn copy<T>(&self, src: &Buf<T>, dst: &Buf<T>) -> Result<()> {
        assert!(src.len <= dst.len);
        self.bind()?;
        // SAFETY: src.len values fit in both buffers (asserted).
        check(
            self.api,
            unsafe {
                (self.api.cu.cuMemcpyDtoD_v2)(dst.ptr, src.ptr, src.len * std::mem::size_of::<T>())
            },
            "cuMemcpyDtoD",
        )
    }

    // ------------------------------------------------------------ launching

    fn launch(&self, name: &str, grid: (u32, u32), block: u32, args: &mut [Arg]) -> Result<()> {
        self.bind()?;
        let f = self.funcs[name];
        let mut ptrs: Vec<*mut c_void> = args
            .iter_mut()
            .map(|a| match a {
                Arg::P(v) | Arg::U(v) => v as *mut u64 as *mut c_void,
                Arg::I(v) => v as *mut i32 as *mut c_void,
                Arg::L(v) => v as *mut i64 as *mut c_void,
                Arg::F(v) => v as *mut f32 as *mut c_void,
            })
            .collect();
        // SAFETY: the kernel's parameters, in order and of its C types (the callers
        // below match kernels.cu), each pointing at a value alive for the call.
        let r = unsafe {
            (self.api.cu.cuLaunchKernel)(
                f,
                grid.0,
                grid.1,
                1,
                block,
                1,
                1,
                0,
                std::ptr::null_mut(),
                ptrs.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        };
        check(self.api, r, name)
    }

    /// A kernel over `n` elements (grid-stride).
    fn each(&self, name: &str, n: usize, args: &mut [Arg]) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        self.launch(name, (blocks(n), 1), THREADS, args)
    }

    /// A kernel with one block per row.
    fn per_row(&self, name: &str, rows: usize, args: &mut [Arg]) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        if rows > i32::MAX as usize {
            return Err(err(
                name,
                format!("{rows} rows is more than one launch takes"),
            ));
        }
        self.launch(name, (rows as u32, 1), THREADS, args)
    }

    // ------------------------------------------------------------ matrix products

    /// Row-major `c [m, n] = alpha · op(a) · op(b) + beta · c`, where `op(a)` is `a
    /// [m, k]`, or the transpose of `a [k, m]` with `ta`, and `op(b)` is `b [k, n]`, or the
    /// transpose of `b [n, k]` with `tb`; `batch` products at element strides
    /// `(sa, sb, sc)`. Offsets are in elements.
    #[allow(clippy::too_many_arguments)]
    fn sgemm(
        &self,
        (ta, tb): (bool, bool),
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        a: CUdeviceptr,
        b: CUdeviceptr,
        beta: f32,
        c: CUdeviceptr,
        batch: usize,
        (sa, sb, sc): (usize, usize, usize),
    ) -> Result<()> {
        self.bind()?;
        let fits = |v: usize| v <= i32::MAX as usize;
        if !(fits(m) && fits(n) && fits(k) && fits(batch)) {
            return Err(err(
                "matrix product",
                format!("{m}×{k}·{k}×{n} is too large for cuBLAS"),
            ));
        }
        let ((opb, ldb), (opa, lda)) = (blas_operand(tb, k, n), blas_operand(ta, m, k));
        let blas = &self.api.blas;
        match self.precision.get() {
            Precision::F32 => {}
            Precision::Tf32 => {
                let kind = (ffi::CUDA_R_32F, ffi::CUBLAS_COMPUTE_32F_FAST_TF32);
                return self.gemm_ex(
                    (ta, tb),
                    (m, n, k),
                    alpha,
                    a,
                    b,
                    kind,
                    beta,
                    c,
                    batch,
                    (sa, sb, sc),
                );
            }
            Precision::Bf16 => {
                // The operands rounded to bf16 in scratch.
                let na = sa * (batch - 1) + m * k;
                let nb = sb * (batch - 1) + k * n;
                let ha = self.scratch(S_HA, na.div_ceil(2))?;
                let hb = self.scratch(S_HB, nb.div_ceil(2))?;
                self.convert_bf16(a, ha.ptr, na)?;
                self.convert_bf16(b, hb.ptr, nb)?;
                let kind = (ffi::CUDA_R_16BF, ffi::CUBLAS_COMPUTE_32F);
                return self.gemm_ex(
                    (ta, tb),
                    (m, n, k),
                    alpha,
                    ha.ptr,
                    hb.ptr,
                    kind,
                    beta,
                    c,
                    batch,
                    (sa, sb, sc),
                );
            }
        }
        // SAFETY: the buffers behind a, b, c hold the products' operands at these
        // strides (the callers check their lengths).
        let r = unsafe {
            if batch == 1 {
                (blas.cublasSgemm_v2)(
                    self.blas,
                    opb,
                    opa,
                    n as c_int,
                    m as c_int,
                    k as c_int,
                    &alpha,
                    b as *const f32,
                    ldb as c_int,
                    a as *const f32,
                    lda as c_int,
                    &beta,
                    c as *mut f32,
                    n as c_int,
                )
            } else {
                (blas.cublasSgemmStridedBatched)(
                    self.blas,
                    opb,
                    opa,
                    n as c_int,
                    m as c_int,
                    k as c_int,
                    &alpha,
                    b as *const f32,
                    ldb as c_int,
                    sb as i64,
                    a as *const f32,
                    lda as c_int,
                    sa as i64,
                    &beta,
                    c as *mut f32,
                    n as c_int,
                    sc as i64,
                    batch as c_int,
                )
            }
        };
        check_blas(r, "cublasSgemm")
    }

    /// [`Gpu::sgemm`] on the tensor cores: operands of type `kind.0` (f32 read as TF32,
    /// or bf16) with compute type `kind.1`, f32 results; sizes checked by the caller.
    #[allow(clippy::too_many_arguments)]
    fn gemm_ex(
        &self,
        (ta, tb): (bool, bool),
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        a: CUdeviceptr,
        b: CUdeviceptr,
        (kind, compute): (c_int, c_int),
        beta: f32,
        c: CUdeviceptr,
        batch: usize,
        (sa, sb, sc): (usize, usize, usize),
    ) -> Result<()> {
        let ((opb, ldb), (opa, lda)) = (blas_operand(tb, k, n), blas_operand(ta, m, k));
        // SAFETY: the buffers behind a, b, c hold the products' operands (of `kind`) at
        // these strides (the callers check their lengths).
        let r = unsafe {
            (self.api.blas.cublasGemmStridedBatchedEx)(
                self.blas,
                opb,
                opa,
                n as c_int,
                m as c_int,
                k as c_int,
                &alpha as *const f32 as *const c_void,
                b as *const c_void,
                kind,
                ldb as c_int,
                sb as i64,
                a as *const c_void,
                kind,
                lda as c_int,
                sa as i64,
                &beta as *const f32 as *const c_void,
                c as *mut c_void,
                ffi::CUDA_R_32F,
                n as c_int,
                sc as i64,
                batch as c_int,
                compute,
                ffi::CUBLAS_GEMM_DEFAULT,
            )
        };
        check_blas(r, "cublasGemmStridedBatchedEx")
    }

    /// `len` f32 values at `src` rounded to bf16 at `dst`.
    fn convert_bf16(&self, src: CUdeviceptr, dst: CUdeviceptr, len: usize) -> Result<()> {
        self.each(
            "to_bf16",
            len,
            &mut [Arg::P(src), Arg::P(dst), Arg::L(len as i64)],
        )
    }

    /// `c [m, n] = op(a) · op(b)` (`beta` 0) or `c += op(a) · op(b)` (`accumulate`), in f32
    /// (see [`Gpu::sgemm`] for `op`): the CPU engine's [`gemm`](super::cpu::gemm) with
    /// `Rhs::Nn`/`Rhs::Nt` (`tb`), and with `ta` its weight gradient
    /// [`gemm_tn_acc`](super::cpu::gemm_tn_acc).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        a: &Buf<f32>,
        b: &Buf<f32>,
        c: &Buf<f32>,
        accumulate: bool,
    ) -> Result<()> {
        assert!(
            a.len >= m * k && b.len >= k * n && c.len >= m * n,
            "gemm operands too short"
        );
        let beta = if accumulate { 1.0 } else { 0.0 };
        self.sgemm(
            (ta, tb),
            (m, n, k),
            1.0,
            a.ptr,
            b.ptr,
            beta,
            c.ptr,
            1,
            (0, 0, 0),
        )
    }

    /// [`Gpu::gemm`] over bf16 operands (16-bit words, see [`Gpu::to_bf16`]) with f32
    /// accumulation and an f32 result.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_bf16(
        &self,
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        a: &Buf<u16>,
        b: &Buf<u16>,
        c: &Buf<f32>,
        accumulate: bool,
    ) -> Result<()> {
        assert!(
            a.len >= m * k && b.len >= k * n && c.len >= m * n,
            "gemm operands too short"
        );
        self.bind()?;
        let beta = if accumulate { 1.0 } else { 0.0 };
        let kind = (ffi::CUDA_R_16BF, ffi::CUBLAS_COMPUTE_32F);
        self.gemm_ex(
            (ta, tb),
            (m, n, k),
            1.0,
            a.ptr,
            b.ptr,
            kind,
            beta,
            c.ptr,
            1,
            (0, 0, 0),
        )
    }

    /// bf16 copies of `x` (round to nearest even).
    pub fn to_bf16(&self, x: &Buf<f32>) -> Result<Buf<u16>> {
        let y = self.alloc::<u16>(x.len)?;
        self.convert_bf16(x.ptr, y.ptr, x.len)?;
        Ok(y)
    }

    // ------------------------------------------------------------ elementwise

    /// `y[r, j] += bias[j]` over `y [m, n]`.
    pub fn add_bias(&self, y: &Buf<f32>, bias: &Buf<f32>, m: usize, n: usize) -> Result<()> {
        assert!(y.len >= m * n && bias.len >= n);
        self.each(
            "add_bias",
            m * n,
            &mut [
                Arg::P(y.ptr),
                Arg::P(bias.ptr),
                Arg::L(m as i64),
                Arg::I(n as i32),
            ],
        )
    }

    /// `out[i] = a[i] + b[i]` for the first `n` (`out` may be either).
    pub fn add(&self, out: &Buf<f32>, a: &Buf<f32>, b: &Buf<f32>, n: usize) -> Result<()> {
        assert!(out.len >= n && a.len >= n && b.len >= n);
        self.each(
            "add",
            n,
            &mut [
                Arg::P(out.ptr),
                Arg::P(a.ptr),
                Arg::P(b.ptr),
                Arg::L(n as i64),
            ],
        )
    }

    /// Sets the first `n` values to zero.
    pub fn clear(&self, x: &Buf<f32>, n: usize) -> Result<()> {
        assert!(x.len >= n);
        self.bind()?;
        // SAFETY: n words of the buffer (asserted).
        check(
            self.api,
            unsafe { (self.api.cu.cuMemsetD32_v2)(x.ptr, 0, n) },
            "cuMemsetD32",
        )
    }

    /// `y[i] *= d[i]` for the first `n` (the gradient through an activation, given its
    /// derivative).
    pub fn mul_into(&self, y: &Buf<f32>, d: &Buf<f32>, n: usize) -> Result<()> {
        assert!(y.len >= n && d.len >= n);
        self.each(
            "mul_into",
            n,
            &mut [Arg::P(y.ptr), Arg::P(d.ptr), Arg::L(n as i64)],
        )
    }

    /// The epilogue of the CPU engine's
    /// [`gemm_bias_gelu`](super::cpu::gemm_bias_gelu): with `x = y + bias`, `act =
    /// gelu(x)` (tanh form) and `y` replaced by `gelu'(x)`.
    pub fn bias_gelu(
        &self,
        y: &Buf<f32>,
        bias: Option<&Buf<f32>>,
        act: &Buf<f32>,
        m: usize,
        n: usize,
    ) -> Result<()> {
        assert!(y.len >= m * n && act.len >= m * n && bias.is_none_or(|b| b.len >= n));
        let b = bias.map_or(0, |b| b.ptr);
        self.each(
            "bias_gelu",
            m * n,
            &mut [
                Arg::P(y.ptr),
                Arg::P(b),
                Arg::P(act.ptr),
                Arg::L(m as i64),
                Arg::I(n as i32),
            ],
        )
    }

    /// [`swiglu`](super::cpu::swiglu).
    pub fn swiglu(&self, gu: &Buf<f32>, m: usize, f: usize, act: &Buf<f32>) -> Result<()> {
        assert!(gu.len >= 2 * m * f && act.len >= m * f);
        self.each(
            "swiglu",
            m * f,
            &mut [
                Arg::P(gu.ptr),
                Arg::L(m as i64),
                Arg::I(f as i32),
                Arg::P(act.ptr),
            ],
        )
    }

    /// [`swiglu_backward`](super::cpu::swiglu_backward).
    pub fn swiglu_backward(
        &self,
        d: &Buf<f32>,
        gu: &Buf<f32>,
        m: usize,
        f: usize,
        dgu: &Buf<f32>,
    ) -> Result<()> {
        assert!(d.len >= m * f && gu.len >= 2 * m * f && dgu.len >= 2 * m * f);
        self.each(
            "swiglu_bwd",
            m * f,
            &mut [
                Arg::P(d.ptr),
                Arg::P(gu.ptr),
                Arg::L(m as i64),
                Arg::I(f as i32),
                Arg::P(dgu.ptr),
            ],
        )
    }

    /// `out = x ⊙ mask` over the first `n` values, the mask of the CPU engine's
    /// [`Dropout`] (the same elements dropped); `out` may be `x`.
    pub fn dropout(&self, x: &Buf<f32>, d: Dropout, out: &Buf<f32>, n: usize) -> Result<()> {
        assert!(x.len >= n && out.len >= n);
        self.dropout_at(x.ptr, d, out.ptr, n)
    }

    fn dropout_at(&self, x: CUdeviceptr, d: Dropout, out: CUdeviceptr, n: usize) -> Result<()> {
        self.each(
            "dropout",
            n,
            &mut [
                Arg::P(x),
                Arg::P(out),
                Arg::L(n as i64),
                Arg::U(d.seed),
                Arg::U(d.threshold()),
                Arg::F(d.scale()),
            ],
        )
    }

    // ------------------------------------------------------------ norms

    /// [`layer_norm`](super::cpu::layer_norm) (RMSNorm when `b` is `None`) of `x [m, n]`.
    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm(
        &self,
        x: &Buf<f32>,
        w: &Buf<f32>,
        b: Option<&Buf<f32>>,
        eps: f32,
        m: usize,
        out: &Buf<f32>,
        stats: &Buf<f32>,
    ) -> Result<()> {
        let n = w.len;
        assert!(
            x.len >= m * n
                && out.len >= m * n
                && stats.len >= 2 * m
                && b.is_none_or(|b| b.len >= n)
        );
        self.per_row(
            "layer_norm",
            m,
            &mut [
                Arg::P(x.ptr),
                Arg::P(w.ptr),
                Arg::P(b.map_or(0, |b| b.ptr)),
                Arg::F(eps),
                Arg::I(n as i32),
                Arg::P(out.ptr),
                Arg::P(stats.ptr),
            ],
        )
    }

    /// [`layer_norm_backward`](super::cpu::layer_norm_backward): adds into `dx`, `dw`
    /// and (LayerNorm) `db`.
    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm_backward(
        &self,
        g: &Buf<f32>,
        x: &Buf<f32>,
        stats: &Buf<f32>,
        w: &Buf<f32>,
        m: usize,
        dx: &Buf<f32>,
        dw: &Buf<f32>,
        db: Option<&Buf<f32>>,
    ) -> Result<()> {
        let n = w.len;
        assert!(
            g.len >= m * n
                && x.len >= m * n
                && dx.len >= m * n
                && dw.len >= n
                && stats.len >= 2 * m
        );
        self.per_row(
            "layer_norm_bwd_x",
            m,
            &mut [
                Arg::P(g.ptr),
                Arg::P(x.ptr),
                Arg::P(stats.ptr),
                Arg::P(w.ptr),
                Arg::I(db.is_some() as i32),
                Arg::I(n as i32),
                Arg::P(dx.ptr),
            ],
        )?;
        if m == 0 {
            return Ok(());
        }
        let per = rows_per_block(m);
        let chunks = m.div_ceil(per);
        let part = self.scratch(S_PART, chunks * 2 * n)?;
        self.launch(
            "layer_norm_bwd_wb",
            (n.div_ceil(THREADS as usize) as u32, chunks as u32),
            THREADS,
            &mut [
                Arg::P(g.ptr),
                Arg::P(x.ptr),
                Arg::P(stats.ptr),
                Arg::I(m as i32),
                Arg::I(n as i32),
                Arg::I(per as i32),
                Arg::P(part.ptr),
            ],
        )?;
        self.sum_parts(part.ptr, chunks, 2 * n, n, dw.ptr)?;
        if let Some(db) = db {
            assert!(db.len >= n);
            self.sum_parts(part.at(n), chunks, 2 * n, n, db.ptr)?;
        }
        Ok(())
    }

    fn sum_parts(
        &self,
        part: CUdeviceptr,
        chunks: usize,
        stride: usize,
        n: usize,
        out: CUdeviceptr,
    ) -> Result<()> {
        self.launch(
            "sum_parts",
            (n.div_ceil(THREADS as usize) as u32, 1),
            THREADS,
            &mut [
                Arg::P(part),
                Arg::I(chunks as i32),
                Arg::I(stride as i32),
                Arg::I(n as i32),
                Arg::P(out),
            ],
        )
    }

    /// `out[j] += Σ_r x[r, j]` over `x [m, n]` (a bias gradient), in a fixed order.
    pub fn col_sums_acc(&self, x: &Buf<f32>, m: usize, n: usize, out: &Buf<f32>) -> Result<()> {
        assert!(x.len >= m * n && out.len >= n);
        if m == 0 {
            return Ok(());
        }
        let per = rows_per_block(m);
        let chunks = m.div_ceil(per);
        let part = self.scratch(S_PART, chunks * n)?;
        self.launch(
            "col_sums",
            (n.div_ceil(THREADS as usize) as u32, chunks as u32),
            THREADS,
            &mut [
                Arg::P(x.ptr),
                Arg::I(m as i32),
                Arg::I(n as i32),
                Arg::I(per as i32),
                Arg::P(part.ptr),
            ],
        )?;
        self.sum_parts(part.ptr, chunks, n, n, out.ptr)
    }

    // ------------------------------------------------------------ loss, optimiser

    /// [`smoothed_cross_entropy`](super::cpu::smoothed_cross_entropy) of `logits [m, v]`:
    /// the summed loss, and with `grad_scale` the logits replaced by their gradient.
    pub fn cross_entropy(
        &self,
        logits: &Buf<f32>,
        v: usize,
        targets: &Buf<u32>,
        eps: f32,
        grad_scale: Option<f32>,
    ) -> Result<f64> {
        let m = targets.len;
        assert!(logits.len >= m * v);
        let losses = self.scratch(S_LOSS, m)?;
        self.per_row(
            "cross_entropy",
            m,
            &mut [
                Arg::P(logits.ptr),
                Arg::I(v as i32),
                Arg::P(targets.ptr),
                Arg::F(eps),
                Arg::F(grad_scale.unwrap_or(0.0)),
                Arg::I(grad_scale.is_some() as i32),
                Arg::P(losses.ptr),
            ],
        )?;
        Ok(self.download(&losses)?.iter().map(|&l| l as f64).sum())
    }

    /// [`adamw`](super::cpu::adamw) over `segments` (`start..end`, with or without weight
    /// decay) of the flat buffers.
    pub fn adamw(
        &self,
        p: &Buf<f32>,
        g: &Buf<f32>,
        m: &Buf<f32>,
        v: &Buf<f32>,
        segments: &[(usize, usize, bool)],
        s: super::cpu::AdamWStep,
    ) -> Result<()> {
        let n = p.len;
        assert!(g.len == n && m.len == n && v.len == n);
        for &(a, b, decays) in segments {
            assert!(a <= b && b <= n);
            self.each(
                "adamw",
                b - a,
                &mut [
                    Arg::P(p.at(a)),
                    Arg::P(g.at(a)),
                    Arg::P(m.at(a)),
                    Arg::P(v.at(a)),
                    Arg::L((b - a) as i64),
                    Arg::F(s.lr),
                    Arg::F(if decays { s.decay } else { 0.0 }),
                    Arg::F(s.beta1),
                    Arg::F(s.beta2),
                    Arg::F(s.bc1),
                    Arg::F(s.bc2),
                    Arg::F(s.eps),
                    Arg::F(s.grad_scale),
                ],
            )?;
        }
        Ok(())
    }

    /// [`sum_squares`](super::cpu::sum_squares): Σ x² in f64.
    pub fn sum_squares(&self, x: &Buf<f32>) -> Result<f64> {
        let nb = blocks(x.len).min(1024) as usize;
        let part = self.alloc::<f64>(nb)?;
        self.launch(
            "sum_squares",
            (nb as u32, 1),
            THREADS,
            &mut [Arg::P(x.ptr), Arg::L(x.len as i64), Arg::P(part.ptr)],
        )?;
        Ok(self.download(&part)?.iter().sum())
    }

    // ------------------------------------------------------------ embeddings

    /// `out[r] = wte[ids[r]] + wpe[r % t]` (without `wpe`, the token rows alone); the ids
    /// must be below the table's rows (checked here, against `vocab`).
    pub fn embed(
        &self,
        ids: &Buf<u32>,
        wte: &Buf<f32>,
        wpe: Option<&Buf<f32>>,
        t: usize,
        c: usize,
        out: &Buf<f32>,
    ) -> Result<()> {
        let rows = ids.len;
        assert!(out.len >= rows * c && t > 0 && wpe.is_none_or(|w| w.len >= t * c));
        self.each(
            "embed",
            rows * c,
            &mut [
                Arg::P(ids.ptr),
                Arg::P(wte.ptr),
                Arg::P(wpe.map_or(0, |w| w.ptr)),
                Arg::I(t as i32),
                Arg::I(c as i32),
                Arg::L(rows as i64),
                Arg::P(out.ptr),
            ],
        )
    }

    /// The backward of [`Gpu::embed`]: adds `g [rows, c]` into the rows of `dwte` the ids
    /// name, and (with `dwpe`) into the position rows, for `b = rows / t` sequences.
    pub fn embed_backward(
        &self,
        ids: &Buf<u32>,
        g: &Buf<f32>,
        t: usize,
        c: usize,
        dwte: &Buf<f32>,
        dwpe: Option<&Buf<f32>>,
    ) -> Result<()> {
        let rows = ids.len;
        assert!(g.len >= rows * c && rows.is_multiple_of(t));
        self.each(
            "embed_bwd",
            rows * c,
            &mut [
                Arg::P(ids.ptr),
                Arg::P(g.ptr),
                Arg::I(c as i32),
                Arg::L(rows as i64),
                Arg::P(dwte.ptr),
            ],
        )?;
        if let Some(dwpe) = dwpe {
            assert!(dwpe.len >= t * c);
            self.each(
                "pos_bwd",
                t * c,
                &mut [
                    Arg::P(g.ptr),
                    Arg::I((rows / t) as i32),
                    Arg::I(t as i32),
                    Arg::I(c as i32),
                    Arg::P(dwpe.ptr),
                ],
            )?;
        }
        Ok(())
    }

    // ------------------------------------------------------------ attention

    fn gather(
        &self,
        src: CUdeviceptr,
        width: usize,
        col0: usize,
        (b, t, nh, hd): (usize, usize, usize, usize),
        dst: CUdeviceptr,
    ) -> Result<()> {
        self.each(
            "gather_heads",
            b * nh * t * hd,
            &mut [
                Arg::P(src),
                Arg::I(width as i32),
                Arg::I(col0 as i32),
                Arg::I(b as i32),
                Arg::I(t as i32),
                Arg::I(nh as i32),
                Arg::I(hd as i32),
                Arg::P(dst),
            ],
        )
    }

    fn scatter(
        &self,
        src: CUdeviceptr,
        width: usize,
        col0: usize,
        (b, t, nh, hd): (usize, usize, usize, usize),
        dst: CUdeviceptr,
    ) -> Result<()> {
        self.each(
            "scatter_heads",
            b * nh * t * hd,
            &mut [
                Arg::P(src),
                Arg::I(width as i32),
                Arg::I(col0 as i32),
                Arg::I(b as i32),
                Arg::I(t as i32),
                Arg::I(nh as i32),
                Arg::I(hd as i32),
                Arg::P(dst),
            ],
        )
    }

    /// Queries, keys and values of `qkv` as heads `[b, heads, t, dim]`.
    fn split_qkv(&self, qkv: &Buf<f32>, b: usize, t: usize, h: Heads) -> Result<[Buf<f32>; 3]> {
        let (w, hd) = (h.width(), h.dim);
        let q = self.scratch(S_Q, b * h.n * t * hd)?;
        let k = self.scratch(S_K, b * h.kv * t * hd)?;
        let v = self.scratch(S_V, b * h.kv * t * hd)?;
        self.gather(qkv.ptr, w, 0, (b, t, h.n, hd), q.ptr)?;
        self.gather(qkv.ptr, w, h.n * hd, (b, t, h.kv, hd), k.ptr)?;
        self.gather(qkv.ptr, w, (h.n + h.kv) * hd, (b, t, h.kv, hd), v.ptr)?;
        Ok([q, k, v])
    }

    /// [`attention`](super::cpu::attention): causal attention over `b` sequences of `t`
    /// positions of `qkv [b·t, heads.width()]`, grouped key/value heads, an optional
    /// sliding window and dropout on the weights; writes the weights to
    /// `probs [b, heads.n, t, t]` and the output to `y [b·t, heads.q_width()]`.
    /// (This version computes every score through cuBLAS and keeps the weights: the
    /// CPU engine's contract. A fused, flash-style kernel is the next step.)
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        qkv: &Buf<f32>,
        b: usize,
        t: usize,
        heads: Heads,
        window: Option<usize>,
        probs: &Buf<f32>,
        y: &Buf<f32>,
        dropout: Option<Dropout>,
    ) -> Result<()> {
        let (nh, kv, hd) = (heads.n, heads.kv, heads.dim);
        assert!(
            qkv.len >= b * t * heads.width()
                && probs.len >= b * nh * t * t
                && y.len >= b * t * nh * hd
        );
        let group = nh / kv;
        let [q, k, v] = self.split_qkv(qkv, b, t, heads)?;
        let scale = 1.0 / (hd as f32).sqrt();
        // Scores of the group of query heads sharing key head g: [group·t, t].
        self.sgemm(
            (false, true),
            (group * t, t, hd),
            scale,
            q.ptr,
            k.ptr,
            0.0,
            probs.ptr,
            b * kv,
            (group * t * hd, t * hd, group * t * t),
        )?;
        self.per_row(
            "causal_softmax",
            b * nh * t,
            &mut [
                Arg::P(probs.ptr),
                Arg::I(t as i32),
                Arg::I(window.unwrap_or(0) as i32),
                Arg::L((b * nh * t) as i64),
            ],
        )?;
        let dropped;
        let weights = match dropout {
            None => probs.ptr,
            Some(d) => {
                dropped = self.scratch(S_DROPPED, b * nh * t * t)?;
                self.dropout_at(probs.ptr, d, dropped.ptr, b * nh * t * t)?;
                dropped.ptr
            }
        };
        let yh = self.scratch(S_YH, b * nh * t * hd)?;
        self.sgemm(
            (false, false),
            (group * t, hd, t),
            1.0,
            weights,
            v.ptr,
            0.0,
            yh.ptr,
            b * kv,
            (group * t * t, t * hd, group * t * hd),
        )?;
        self.scatter(yh.ptr, nh * hd, 0, (b, t, nh, hd), y.ptr)
    }

    /// [`attention_backward`](super::cpu::attention_backward): from `dy`, writes the
    /// gradient of `qkv` to `dqkv`.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward(
        &self,
        dy: &Buf<f32>,
        qkv: &Buf<f32>,
        probs: &Buf<f32>,
        b: usize,
        t: usize,
        heads: Heads,
        dqkv: &Buf<f32>,
        dropout: Option<Dropout>,
    ) -> Result<()> {
        let (nh, kv, hd) = (heads.n, heads.kv, heads.dim);
        let w = heads.width();
        assert!(dy.len >= b * t * nh * hd && dqkv.len >= b * t * w && probs.len >= b * nh * t * t);
        let group = nh / kv;
        let scale = 1.0 / (hd as f32).sqrt();
        let [q, k, v] = self.split_qkv(qkv, b, t, heads)?;
        let dyh = self.scratch(S_YH, b * nh * t * hd)?;
        self.gather(dy.ptr, nh * hd, 0, (b, t, nh, hd), dyh.ptr)?;
        let tt = b * nh * t * t;
        let dp = self.scratch(S_DP, tt)?;
        // dP = dY·Vᵀ, through the dropout mask when there is one.
        self.sgemm(
            (false, true),
            (group * t, t, hd),
            1.0,
            dyh.ptr,
            v.ptr,
            0.0,
            dp.ptr,
            b * kv,
            (group * t * hd, t * hd, group * t * t),
        )?;
        let dropped;
        let weights = match dropout {
            None => probs.ptr,
            Some(d) => {
                self.dropout_at(dp.ptr, d, dp.ptr, tt)?;
                dropped = self.scratch(S_DROPPED, tt)?;
                self.dropout_at(probs.ptr, d, dropped.ptr, tt)?;
                dropped.ptr
            }
        };
        let dv = self.scratch(S_DV, b * kv * t * hd)?;
        self.sgemm(
            (true, false),
            (t, hd, group * t),
            1.0,
            weights,
            dyh.ptr,
            0.0,
            dv.ptr,
            b * kv,
            (group * t * t, group * t * hd, t * hd),
        )?;
        self.per_row(
            "softmax_bwd",
            b * nh * t,
            &mut [Arg::P(probs.ptr), Arg::P(dp.ptr), Arg::I(t as i32)],
        )?;
        let dq = self.scratch(S_DQ, b * nh * t * hd)?;
        self.sgemm(
            (false, false),
            (group * t, hd, t),
            scale,
            dp.ptr,
            k.ptr,
            0.0,
            dq.ptr,
            b * kv,
            (group * t * t, t * hd, group * t * hd),
        )?;
        let dk = self.scratch(S_DK, b * kv * t * hd)?;
        self.sgemm(
            (true, false),
            (t, hd, group * t),
            scale,
            dp.ptr,
            q.ptr,
            0.0,
            dk.ptr,
            b * kv,
            (group * t * t, group * t * hd, t * hd),
        )?;
        self.scatter(dq.ptr, w, 0, (b, t, nh, hd), dqkv.ptr)?;
        self.scatter(dk.ptr, w, nh * hd, (b, t, kv, hd), dqkv.ptr)?;
        self.scatter(dv.ptr, w, (nh + kv) * hd, (b, t, kv, hd), dqkv.ptr)
    }

    /// A rotary table on the device (see [`Gpu::rope`]).
    pub fn upload_rope(&self, table: &RopeTable) -> Result<GpuRope> {
        Ok(GpuRope {
            cos: self.upload(&table.cos)?,
            sin: self.upload(&table.sin)?,
            half: table.half,
            first: table.first,
        })
    }

    /// [`rope`](super::cpu::rope): rotary positions on the queries and keys of
    /// `qkv [m, heads.width()]` in place, row `r` at position `r % t`; `inverse` is the
    /// backward pass.
    pub fn rope(
        &self,
        qkv: &Buf<f32>,
        m: usize,
        t: usize,
        heads: Heads,
        table: &GpuRope,
        inverse: bool,
    ) -> Result<()> {
        assert!(qkv.len >= m * heads.width() && 2 * table.half == heads.dim);
        let rows = table.cos.len / table.half.max(1);
        assert!(
            table.first + rows >= t.min(m),
            "the rotary table is too short"
        );
        let rot = heads.n + heads.kv;
        self.each(
            "rope",
            m * rot * table.half,
            &mut [
                Arg::P(qkv.ptr),
                Arg::L(m as i64),
                Arg::I(t as i32),
                Arg::I(heads.width() as i32),
                Arg::I(rot as i32),
                Arg::I(table.half as i32),
                Arg::P(table.cos.ptr),
                Arg::P(table.sin.ptr),
                Arg::I(table.first as i32),
                Arg::F(if inverse { -1.0 } else { 1.0 }),
            ],
        )
    }

    // ------------------------------------------------------------ timing

    /// Milliseconds the device spent on `f`'s work (events around it, after a sync).
    pub fn time_ms(&self, f: impl FnOnce() -> Result<()>) -> Result<f32> {
        self.bind()?;
        let cu = &self.api.cu;
        let (mut a, mut b) = (std::ptr::null_mut(), std::ptr::null_mut());
        // SAFETY: two events created, recorded on the default stream around f's work,
        // waited for, read and destroyed.
        unsafe {
            check(self.api, (cu.cuEventCreate)(&mut a, 0), "cuEventCreate")?;
            check(self.api, (cu.cuEventCreate)(&mut b, 0), "cuEventCreate")?;
            check(
                self.api,
                (cu.cuEventRecord)(a, std::ptr::null_mut()),
                "cuEventRecord",
            )?;
            let r = f();
            check(
                self.api,
                (cu.cuEventRecord)(b, std::ptr::null_mut()),
                "cuEventRecord",
            )?;
            check(self.api, (cu.cuEventSynchronize)(b), "a CUDA kernel")?;
            let mut ms = 0f32;
            check(
                self.api,
                (cu.cuEventElapsedTime)(&mut ms, a, b),
                "cuEventElapsedTime",
            )?;
            (cu.cuEventDestroy_v2)(a);
            (cu.cuEventDestroy_v2)(b);
            r?;
            Ok(ms)
        }
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        self.scratch.borrow_mut().clear();
        // SAFETY: this GPU's context and its own cuBLAS handle, destroyed once.
        unsafe {
            (self.api.cu.cuCtxSetCurrent)(self.ctx);
            (self.api.blas.cublasDestroy_v2)(self.blas);
        }
    }
}

/// Rotary tables on the device.
pub struct GpuRope {
    cos: Buf<f32>,
    sin: Buf<f32>,
    half: usize,
    first: usize,
}
