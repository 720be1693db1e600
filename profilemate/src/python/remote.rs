//! Read-only access to a target's memory, behind a one-method trait so the readers above it
//! can be tested on byte buffers.

/// A read of target memory failed (unmapped address, process gone, no permission).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot read {len} bytes at {addr:#x} in the target{}", if *.gone { " (the process has exited)" } else { "" })]
pub struct ReadError {
    /// Address.
    pub addr: u64,
    /// Length.
    pub len: usize,
    /// The process has exited (or is a zombie without memory): no read can succeed again.
    pub gone: bool,
}

impl ReadError {
    /// A read of `len` bytes at `addr` that failed while the process was there.
    #[must_use]
    pub fn at(addr: u64, len: usize) -> Self {
        Self {
            addr,
            len,
            gone: false,
        }
    }
}

/// The address `offset` bytes into the object at `base`. `base` is a pointer read from the
/// target: a corrupt one near the top of the address space would overflow the sum, and such
/// a field is as unreadable as unmapped memory (the error names the span past `base`).
pub fn field(base: u64, offset: u64) -> Result<u64, ReadError> {
    base.checked_add(offset)
        .ok_or_else(|| ReadError::at(base, usize::try_from(offset).unwrap_or(usize::MAX)))
}

/// Read-only memory of one process.
pub trait RemoteMemory {
    /// Fills `buf` from `addr`; all or nothing.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError>;

    /// A little-endian u64 at `addr`.
    fn read_u64(&self, addr: u64) -> Result<u64, ReadError> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// A little-endian i32 at `addr`.
    fn read_i32(&self, addr: u64) -> Result<i32, ReadError> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b)?;
        Ok(i32::from_le_bytes(b))
    }

    /// A little-endian u32 at `addr`.
    fn read_u32(&self, addr: u64) -> Result<u32, ReadError> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
}

/// Another process's memory through `process_vm_readv` (never writes, never stops it).
#[derive(Debug, Clone, Copy)]
pub struct ProcessMemory {
    pid: nix::unistd::Pid,
}

impl ProcessMemory {
    /// Memory of `pid`.
    #[must_use]
    pub fn new(pid: u32) -> Self {
        Self {
            pid: nix::unistd::Pid::from_raw(pid as i32),
        }
    }
}

impl RemoteMemory for ProcessMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let err = ReadError::at(addr, buf.len());
        if buf.is_empty() {
            return Ok(());
        }
        let len = buf.len();
        let remote = [nix::sys::uio::RemoteIoVec {
            base: usize::try_from(addr).map_err(|_| err)?,
            len,
        }];
        let mut local = [std::io::IoSliceMut::new(buf)];
        match nix::sys::uio::process_vm_readv(self.pid, &mut local, &remote) {
            Ok(n) if n == len => Ok(()),
            // ESRCH: no such process, or one that exited and has no memory left to read.
            Err(nix::errno::Errno::ESRCH) => Err(ReadError { gone: true, ..err }),
            _ => Err(err),
        }
    }
}

/// A byte buffer standing in for target memory at a base address (tests, snapshots).
#[derive(Debug, Clone, Default)]
pub struct BufferMemory {
    /// Address of `bytes[0]`.
    pub base: u64,
    /// Contents.
    pub bytes: Vec<u8>,
}

impl RemoteMemory for BufferMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let err = ReadError::at(addr, buf.len());
        let start = usize::try_from(addr.checked_sub(self.base).ok_or(err)?).map_err(|_| err)?;
        let end = start.checked_add(buf.len()).ok_or(err)?;
        let src = self.bytes.get(start..end).ok_or(err)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}
