//! Scratch folders for inputs that the entry points read from files, and the memory cap.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh folder under the system's temporary folder, removed on drop.
pub struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("attn-fuzz-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a scratch folder");
        Scratch { dir }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Write `bytes` as the file `name` of the scratch folder (a failure here is the
    /// harness's own, not a finding).
    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, bytes).expect("write a scratch file");
        p
    }

    /// Remove the file or folder `name` if it is there.
    pub fn remove(&self, name: &str) {
        let p = self.dir.join(name);
        if p.is_dir() {
            let _ = std::fs::remove_dir_all(&p);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The address-space cap of a fuzz target, in MiB: `$ATTN_FUZZ_AS_MIB`, else 2048 (as
/// `scripts/probe_hostile.py` runs the binary). 0 leaves the limit alone (for builds
/// with AddressSanitizer, which reserves terabytes of address space).
pub fn fuzz_cap_mib() -> u64 {
    std::env::var("ATTN_FUZZ_AS_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048)
}

/// Cap this process's address space (RLIMIT_AS) at `mib` MiB, never raising it. Under
/// the cap the library's memory checks see what is left and refuse large requests with
/// an error; an allocation that bypasses them fails, which aborts the process: that is a
/// finding, as it would be for a user running `ulimit -v`.
pub fn cap_address_space(mib: u64) {
    if mib == 0 {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let want = mib.saturating_mul(1 << 20);
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit read and write the struct we own.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_AS, &mut lim) != 0 {
                return;
            }
            if lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur <= want {
                return;
            }
            lim.rlim_cur = want;
            libc::setrlimit(libc::RLIMIT_AS, &lim);
        }
    }
}
