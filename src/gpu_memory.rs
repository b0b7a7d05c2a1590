//! Peak GPU memory, for benchmarks that report memory next to speed.
//!
//! candle allocates every tensor from the device's default CUDA memory pool (cudarc's
//! stream-ordered `cuMemAllocAsync`), and the pool records its own high-water marks: the bytes
//! handed out to live allocations (`USED_MEM_HIGH`, what PyTorch's `max_memory_allocated`
//! reports for its caching allocator) and the bytes the pool held from the device
//! (`RESERVED_MEM_HIGH`, PyTorch's `max_memory_reserved`). Both can be reset, so a benchmark
//! reads the peak of what it ran. Not counted, on either side: the CUDA context, loaded kernels
//! and cuBLAS's own workspace (allocated outside the pool).
//!
//! Off a CUDA device, or in a build without CUDA, there is nothing to read (None).

use candle_core::Device;

/// The pool's high-water marks since the last reset, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeakMemory {
    pub used_bytes: u64,
    pub reserved_bytes: u64,
}

/// Start a new peak on `device`: the high-water marks fall to what is in use now. False where
/// there is no pool to reset (a CPU, a build without CUDA, a driver error).
pub fn reset_peak(device: &Device) -> bool {
    imp::reset_peak(device).is_some()
}

/// The peaks on `device` since the last [`reset_peak`] (or since the pool was created).
pub fn peak(device: &Device) -> Option<PeakMemory> {
    imp::peak(device)
}

#[cfg(not(feature = "cuda"))]
mod imp {
    use super::PeakMemory;
    use candle_core::Device;

    pub fn reset_peak(_: &Device) -> Option<()> {
        None
    }

    pub fn peak(_: &Device) -> Option<PeakMemory> {
        None
    }
}

#[cfg(feature = "cuda")]
mod imp {
    use super::PeakMemory;
    use candle_core::cuda_backend::cudarc::driver::sys;
    use candle_core::Device;

    /// The default memory pool of `device`'s GPU, with its context current on this thread.
    fn pool(device: &Device) -> Option<sys::CUmemoryPool> {
        let Device::Cuda(gpu) = device else {
            return None;
        };
        let stream = gpu.cuda_stream();
        let context = stream.context();
        context.bind_to_thread().ok()?;
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        // SAFETY: `pool` is a valid out-pointer and the device handle comes from a live context.
        let status = unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, context.cu_device()) };
        (status == sys::CUresult::CUDA_SUCCESS && !pool.is_null()).then_some(pool)
    }

    fn attribute(pool: sys::CUmemoryPool, attr: sys::CUmemPool_attribute) -> Option<u64> {
        let mut value: u64 = 0;
        // SAFETY: the high-water attributes are cuuint64_t values; `value` is one.
        let status =
            unsafe { sys::cuMemPoolGetAttribute(pool, attr, (&mut value as *mut u64).cast()) };
        (status == sys::CUresult::CUDA_SUCCESS).then_some(value)
    }

    pub fn reset_peak(device: &Device) -> Option<()> {
        let pool = pool(device)?;
        device.synchronize().ok()?;
        for attr in [
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH,
        ] {
            // The driver accepts only zero, which resets the mark to the current value.
            let mut zero: u64 = 0;
            // SAFETY: as in `attribute`; the driver reads one cuuint64_t.
            let status =
                unsafe { sys::cuMemPoolSetAttribute(pool, attr, (&mut zero as *mut u64).cast()) };
            if status != sys::CUresult::CUDA_SUCCESS {
                return None;
            }
        }
        Some(())
    }

    pub fn peak(device: &Device) -> Option<PeakMemory> {
        let pool = pool(device)?;
        device.synchronize().ok()?;
        Some(PeakMemory {
            used_bytes: attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            )?,
            reserved_bytes: attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_has_no_gpu_peak() {
        assert!(!reset_peak(&Device::Cpu));
        assert_eq!(peak(&Device::Cpu), None);
    }
}
