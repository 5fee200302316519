//! The CUDA libraries, opened at run time with `dlopen`: the driver (`libcuda`), the
//! run-time compiler (`libnvrtc`) and cuBLAS. Nothing here is linked at build time, so a
//! plain `cargo build` needs no CUDA, and a machine without a GPU gets an error naming
//! the library that is missing instead of a loader failure at start.
//!
//! Only the handful of entry points the backend calls are declared, each with its C
//! signature; the `_v2` names are the ones the libraries export for today's API.

#![allow(non_snake_case, non_camel_case_types)]

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};

pub type CUresult = c_int;
pub type CUdevice = c_int;
pub type CUcontext = *mut c_void;
pub type CUmodule = *mut c_void;
pub type CUfunction = *mut c_void;
pub type CUstream = *mut c_void;
pub type CUevent = *mut c_void;
pub type CUdeviceptr = u64;
pub type nvrtcProgram = *mut c_void;
pub type cublasHandle_t = *mut c_void;

/// `CU_DEVICE_ATTRIBUTE_*` values used here.
pub const ATTR_MULTIPROCESSORS: c_int = 16;
pub const ATTR_CC_MAJOR: c_int = 75;
pub const ATTR_CC_MINOR: c_int = 76;
/// `cublasOperation_t`.
pub const CUBLAS_OP_N: c_int = 0;
pub const CUBLAS_OP_T: c_int = 1;
/// `cudaDataType_t` and `cublasComputeType_t` values.
pub const CUDA_R_32F: c_int = 0;
pub const CUDA_R_16BF: c_int = 14;
pub const CUBLAS_COMPUTE_32F: c_int = 68;
pub const CUBLAS_COMPUTE_32F_FAST_TF32: c_int = 77;
pub const CUBLAS_GEMM_DEFAULT: c_int = -1;

/// An opened shared library; never closed (the functions taken from it live as long as
/// the process).
struct Lib(*mut c_void);

impl Lib {
    /// The first of `names` that opens, tried as given (the loader's search path) and
    /// then in the folders of `ATTN_CUDA_LIBS` (colon-separated), `$CUDA_PATH/lib64` and
    /// `/usr/local/cuda/lib64`.
    fn open(what: &str, names: &[&str]) -> Result<Lib, String> {
        let mut dirs: Vec<String> = vec![String::new()];
        if let Ok(list) = std::env::var("ATTN_CUDA_LIBS") {
            dirs.extend(
                list.split(':')
                    .filter(|d| !d.is_empty())
                    .map(|d| format!("{d}/")),
            );
        }
        if let Ok(p) = std::env::var("CUDA_PATH") {
            dirs.push(format!("{p}/lib64/"));
        }
        dirs.push("/usr/local/cuda/lib64/".into());
        dirs.push("/usr/local/cuda/targets/x86_64-linux/lib/".into());
        let mut last = String::new();
        for dir in &dirs {
            for name in names {
                let path = CString::new(format!("{dir}{name}")).map_err(|e| e.to_string())?;
                // SAFETY: a NUL-terminated path; the handle is checked for null.
                let h = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
                if !h.is_null() {
                    return Ok(Lib(h));
                }
                // SAFETY: dlerror returns null or a NUL-terminated message.
                let err = unsafe { libc::dlerror() };
                if !err.is_null() && dir.is_empty() {
                    last = unsafe { CStr::from_ptr(err) }
                        .to_string_lossy()
                        .into_owned();
                }
            }
        }
        Err(format!(
            "{what} not found (tried {}; set ATTN_CUDA_LIBS to the folder that holds it): {last}",
            names.join(", ")
        ))
    }

    /// The function `name`, as the function-pointer type `T`.
    ///
    /// # Safety
    /// `T` must be an `extern "C"` function pointer type matching the symbol's C signature.
    unsafe fn sym<T: Copy>(&self, name: &str) -> Result<T, String> {
        let c = CString::new(name).unwrap();
        let p = libc::dlsym(self.0, c.as_ptr());
        if p.is_null() {
            return Err(format!("the CUDA library has no function {name}"));
        }
        debug_assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<*mut c_void>());
        Ok(std::mem::transmute_copy::<*mut c_void, T>(&p))
    }
}

/// Declares a table of functions taken from one library by their exported names.
macro_rules! table {
    ($(#[$doc:meta])* $name:ident { $($f:ident : fn($($a:ty),*) -> $r:ty;)* }) => {
        $(#[$doc])*
        pub struct $name {
            $(pub $f: unsafe extern "C" fn($($a),*) -> $r,)*
        }
        impl $name {
            fn take(lib: &Lib) -> Result<Self, String> {
                // SAFETY: each field's type is the C signature of the symbol it names.
                unsafe { Ok($name { $($f: lib.sym(stringify!($f))?,)* }) }
            }
        }
    };
}

table!(
    /// The driver API.
    Driver {
        cuInit: fn(c_uint) -> CUresult;
        cuDriverGetVersion: fn(*mut c_int) -> CUresult;
        cuDeviceGetCount: fn(*mut c_int) -> CUresult;
        cuDeviceGet: fn(*mut CUdevice, c_int) -> CUresult;
        cuDeviceGetName: fn(*mut c_char, c_int, CUdevice) -> CUresult;
        cuDeviceTotalMem_v2: fn(*mut usize, CUdevice) -> CUresult;
        cuDeviceGetAttribute: fn(*mut c_int, c_int, CUdevice) -> CUresult;
        cuDevicePrimaryCtxRetain: fn(*mut CUcontext, CUdevice) -> CUresult;
        cuCtxSetCurrent: fn(CUcontext) -> CUresult;
        cuCtxSynchronize: fn() -> CUresult;
        cuMemAlloc_v2: fn(*mut CUdeviceptr, usize) -> CUresult;
        cuMemFree_v2: fn(CUdeviceptr) -> CUresult;
        cuMemGetInfo_v2: fn(*mut usize, *mut usize) -> CUresult;
        cuMemcpyHtoD_v2: fn(CUdeviceptr, *const c_void, usize) -> CUresult;
        cuMemcpyDtoH_v2: fn(*mut c_void, CUdeviceptr, usize) -> CUresult;
        cuMemcpyDtoD_v2: fn(CUdeviceptr, CUdeviceptr, usize) -> CUresult;
        cuMemsetD32_v2: fn(CUdeviceptr, c_uint, usize) -> CUresult;
        cuModuleLoadData: fn(*mut CUmodule, *const c_void) -> CUresult;
        cuModuleGetFunction: fn(*mut CUfunction, CUmodule, *const c_char) -> CUresult;
        cuLaunchKernel: fn(
            CUfunction, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, CUstream,
            *mut *mut c_void, *mut *mut c_void
        ) -> CUresult;
        cuEventCreate: fn(*mut CUevent, c_uint) -> CUresult;
        cuEventRecord: fn(CUevent, CUstream) -> CUresult;
        cuEventSynchronize: fn(CUevent) -> CUresult;
        cuEventElapsedTime: fn(*mut f32, CUevent, CUevent) -> CUresult;
        cuEventDestroy_v2: fn(CUevent) -> CUresult;
        cuGetErrorString: fn(CUresult, *mut *const c_char) -> CUresult;
    }
);

table!(
    /// The run-time compiler.
    Nvrtc {
        nvrtcVersion: fn(*mut c_int, *mut c_int) -> c_int;
        nvrtcCreateProgram: fn(
            *mut nvrtcProgram, *const c_char, *const c_char, c_int, *const *const c_char,
            *const *const c_char
        ) -> c_int;
        nvrtcCompileProgram: fn(nvrtcProgram, c_int, *const *const c_char) -> c_int;
        nvrtcGetProgramLogSize: fn(nvrtcProgram, *mut usize) -> c_int;
        nvrtcGetProgramLog: fn(nvrtcProgram, *mut c_char) -> c_int;
        nvrtcGetCUBINSize: fn(nvrtcProgram, *mut usize) -> c_int;
        nvrtcGetCUBIN: fn(nvrtcProgram, *mut c_char) -> c_int;
        nvrtcDestroyProgram: fn(*mut nvrtcProgram) -> c_int;
        nvrtcGetErrorString: fn(c_int) -> *const c_char;
    }
);

table!(
    /// cuBLAS (column-major matrix products).
    Cublas {
        cublasCreate_v2: fn(*mut cublasHandle_t) -> c_int;
        cublasDestroy_v2: fn(cublasHandle_t) -> c_int;
        cublasSgemm_v2: fn(
            cublasHandle_t, c_int, c_int, c_int, c_int, c_int, *const f32, *const f32, c_int,
            *const f32, c_int, *const f32, *mut f32, c_int
        ) -> c_int;
        cublasSgemmStridedBatched: fn(
            cublasHandle_t, c_int, c_int, c_int, c_int, c_int, *const f32, *const f32, c_int,
            i64, *const f32, c_int, i64, *const f32, *mut f32, c_int, i64, c_int
        ) -> c_int;
        cublasGemmStridedBatchedEx: fn(
            cublasHandle_t, c_int, c_int, c_int, c_int, c_int, *const c_void, *const c_void,
            c_int, c_int, i64, *const c_void, c_int, c_int, i64, *const c_void, *mut c_void,
            c_int, c_int, i64, c_int, c_int, c_int
        ) -> c_int;
    }
);

/// The three libraries' functions.
pub struct Api {
    pub cu: Driver,
    pub rtc: Nvrtc,
    pub blas: Cublas,
}

impl Api {
    /// Opens the libraries and initialises the driver, once per process; the error says
    /// which step failed.
    pub fn get() -> Result<&'static Api, String> {
        use std::sync::OnceLock;
        static API: OnceLock<Result<Api, String>> = OnceLock::new();
        API.get_or_init(|| {
            let cu = Driver::take(&Lib::open(
                "the CUDA driver (libcuda)",
                &["libcuda.so.1", "libcuda.so"],
            )?)?;
            // SAFETY: cuInit takes flags 0.
            let r = unsafe { (cu.cuInit)(0) };
            if r != 0 {
                return Err(format!(
                    "the CUDA driver did not initialise: {}",
                    error_string(&cu, r)
                ));
            }
            let rtc = Nvrtc::take(&Lib::open(
                "the CUDA run-time compiler (libnvrtc)",
                &["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"],
            )?)?;
            let blas = Cublas::take(&Lib::open(
                "cuBLAS (libcublas)",
                &["libcublas.so.13", "libcublas.so.12", "libcublas.so"],
            )?)?;
            Ok(Api { cu, rtc, blas })
        })
        .as_ref()
        .map_err(Clone::clone)
    }
}

/// The driver's name for result `r`.
pub fn error_string(cu: &Driver, r: CUresult) -> String {
    let mut p: *const c_char = std::ptr::null();
    // SAFETY: cuGetErrorString writes a pointer to a static string or leaves it null.
    unsafe { (cu.cuGetErrorString)(r, &mut p) };
    if p.is_null() {
        format!("CUDA error {r}")
    } else {
        // SAFETY: a static NUL-terminated string.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}
