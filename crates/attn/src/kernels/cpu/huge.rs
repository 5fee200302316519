//! Buffers in memory of their own (not the allocator's), advised as transparent huge
//! pages where the system leaves that to `madvise` (the usual setting on servers and
//! VMs: `/sys/kernel/mm/transparent_hugepage/enabled` = `madvise`).
//!
//! Two kinds of memory here are read in long strides or long streams: the training
//! pass's activations, read back in the backward pass with strides of kilobytes over
//! megabytes (measured: 3.5–10% more tokens/s with huge pages), and the weights, streamed
//! whole at every decoded token (`attn bench bandwidth`: about 3–4% more read bandwidth
//! with huge pages on a Zen 4 VM). With 4 KiB pages every 1,024 floats cross a page and
//! can cost a page walk. Memory from the allocator is often reused, already backed by
//! small pages (the advice would not change it); a mapping of its own is fresh, so the
//! advice takes effect at the first write. Weights ([`HugeVec::zeroed`]) advise only the
//! whole 2 MiB pages inside them, so they take no memory beyond their length, and stay
//! plain vectors under 2 MiB; activations ([`HugeVec::zeroed_rounded`]) are mapped from
//! 256 KiB and advised to the end of their last 2 MiB page.

use std::ops::{Deref, DerefMut};

/// Element types for which all-zero bytes are a value (a fresh mapping reads as zeros),
/// their `Default`.
pub trait Zeroed: Copy + Default + Send + Sync + 'static {}
impl Zeroed for f32 {}
impl Zeroed for u16 {}
impl Zeroed for u8 {}
impl Zeroed for i8 {}

/// A fixed-length buffer of `T`, zeroed when made (see the module's notes).
pub struct HugeVec<T: Zeroed> {
    inner: Inner<T>,
}

enum Inner<T> {
    Plain(Vec<T>),
    #[cfg(target_os = "linux")]
    Mapped {
        map: *mut libc::c_void,
        map_len: usize,
        data: *mut T,
        len: usize,
    },
}

// SAFETY: the mapping is owned by the buffer alone, like a Vec's allocation, and T is
// Send + Sync.
unsafe impl<T: Zeroed> Send for HugeVec<T> {}
unsafe impl<T: Zeroed> Sync for HugeVec<T> {}

const HUGE: usize = 2 << 20;

impl<T: Zeroed> HugeVec<T> {
    /// `n` zeros; the whole 2 MiB pages inside advised (weights: no memory beyond the
    /// length).
    pub fn zeroed(n: usize) -> Self {
        Self::make(n, HUGE, false)
    }

    /// `n` zeros, from 256 KiB up, advised to the end of the last 2 MiB page (which
    /// then takes its whole 2 MiB once touched): for the trainer's activations, where
    /// the TLB misses of a partly small-paged buffer cost more than the memory.
    pub fn zeroed_rounded(n: usize) -> Self {
        Self::make(n, 256 << 10, true)
    }

    fn make(n: usize, from: usize, round_up: bool) -> Self {
        #[cfg(target_os = "linux")]
        if let Some(bytes) = n.checked_mul(std::mem::size_of::<T>()) {
            if bytes >= from {
                if let Some(v) = Self::mapped(n, bytes, round_up) {
                    return v;
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (from, round_up);
        HugeVec {
            inner: Inner::Plain(vec![T::default(); n]),
        }
    }

    #[cfg(target_os = "linux")]
    fn mapped(n: usize, bytes: usize, round_up: bool) -> Option<Self> {
        let whole = if round_up {
            bytes.checked_next_multiple_of(HUGE)?
        } else {
            bytes / HUGE * HUGE
        };
        // Room to start the data on a 2 MiB boundary; only touched pages take memory.
        let map_len = bytes
            .max(whole)
            .checked_next_multiple_of(4096)?
            .checked_add(HUGE)?;
        // SAFETY: a fresh private anonymous mapping (zero-filled by the kernel);
        // checked for failure below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return None;
        }
        let data = (map as usize).next_multiple_of(HUGE);
        // SAFETY: data..data + max(bytes, whole) lies inside the mapping (at most HUGE
        // bytes of it precede data). The advice only changes how pages are backed; if
        // refused, they stay small.
        unsafe { libc::madvise(data as *mut libc::c_void, whole, libc::MADV_HUGEPAGE) };
        Some(HugeVec {
            inner: Inner::Mapped {
                map,
                map_len,
                data: data as *mut T,
                len: n,
            },
        })
    }

    /// A copy of `values`.
    pub fn from_slice(values: &[T]) -> Self {
        Self::concat(&[values])
    }

    /// `parts` one after the other, copied once.
    pub fn concat(parts: &[&[T]]) -> Self {
        let mut v = Self::zeroed(parts.iter().map(|p| p.len()).sum());
        let mut at = 0;
        for p in parts {
            v[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        v
    }
}

impl<T: Zeroed> Default for HugeVec<T> {
    fn default() -> Self {
        HugeVec {
            inner: Inner::Plain(Vec::new()),
        }
    }
}

impl<T: Zeroed> Deref for HugeVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match &self.inner {
            Inner::Plain(v) => v,
            // SAFETY: len values at data lie inside the mapping, which lives as long as
            // self; the kernel zeroed them and Zeroed types accept zero bytes.
            #[cfg(target_os = "linux")]
            Inner::Mapped { data, len, .. } => unsafe { std::slice::from_raw_parts(*data, *len) },
        }
    }
}

impl<T: Zeroed> DerefMut for HugeVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match &mut self.inner {
            Inner::Plain(v) => v,
            // SAFETY: as in deref, and &mut self makes the borrow unique.
            #[cfg(target_os = "linux")]
            Inner::Mapped { data, len, .. } => unsafe {
                std::slice::from_raw_parts_mut(*data, *len)
            },
        }
    }
}

impl<T: Zeroed> Drop for HugeVec<T> {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Inner::Mapped { map, map_len, .. } = self.inner {
            // SAFETY: the mapping made in `mapped`, unmapped once.
            unsafe { libc::munmap(map, map_len) };
        }
    }
}

impl<T: Zeroed> Clone for HugeVec<T> {
    fn clone(&self) -> Self {
        Self::from_slice(self)
    }
}

impl<T: Zeroed> From<Vec<T>> for HugeVec<T> {
    /// Small vectors are kept as they are; large ones are copied into a mapping of
    /// their own.
    fn from(v: Vec<T>) -> Self {
        if std::mem::size_of_val(v.as_slice()) < HUGE {
            return HugeVec {
                inner: Inner::Plain(v),
            };
        }
        Self::from_slice(&v)
    }
}

impl<T: Zeroed> FromIterator<T> for HugeVec<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        iter.into_iter().collect::<Vec<T>>().into()
    }
}

/// Return the allocator's free memory to the system (glibc's `malloc_trim`). Called
/// after a model is loaded: the file's bytes and the unpacked tensors, freed by then,
/// sat in the allocator's heap, where the packed weights used to be placed; with the
/// weights in mappings of their own, that memory would otherwise stay resident.
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only gives free pages of the heap back; no live allocation
    // is touched.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buffers below and above 256 KiB and 2 MiB: zeroed, writable to the end, copied by clone and
    /// from a vector, the large ones in a mapping of their own (Linux) that starts on a
    /// 2 MiB boundary.
    #[test]
    fn buffers_are_zeroed_writable_and_copied() {
        for (n, rounded) in [1000usize, 100_000, (2 << 20) / 4 + 77, 3 << 20]
            .into_iter()
            .flat_map(|n| [(n, false), (n, true)])
        {
            let mut v = if rounded {
                HugeVec::<f32>::zeroed_rounded(n)
            } else {
                HugeVec::<f32>::zeroed(n)
            };
            assert!(v.len() == n && v.iter().all(|&x| x == 0.0));
            #[cfg(target_os = "linux")]
            {
                let mapped = matches!(v.inner, Inner::Mapped { .. });
                let from = if rounded { 256 << 10 } else { HUGE };
                assert_eq!(mapped, n * 4 >= from, "n {n}");
                if mapped {
                    assert_eq!(v.as_ptr() as usize % HUGE, 0);
                }
            }
            for (i, x) in v.iter_mut().enumerate() {
                *x = i as f32;
            }
            let c = v.clone();
            assert!(c.iter().enumerate().all(|(i, &x)| x == i as f32));
            let from: HugeVec<f32> = c.to_vec().into();
            assert_eq!(&from[..], &v[..]);
        }
        let q: HugeVec<i8> = (0..5_000_000).map(|i| (i % 7) as i8).collect();
        assert!(q.iter().enumerate().all(|(i, &x)| x == (i % 7) as i8));
    }
}
