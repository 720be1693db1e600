//! Read-only access to a target's memory, behind a one-method trait so the readers above it
//! can be tested on byte buffers.
//!
//! Owns the `RemoteMemory` trait and its implementations (a live pid, a buffer); not what
//! is read.

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

    /// Many small reads at once: `ranges[i]` = (address, length) fills the next `length`
    /// bytes of `buf` (which holds their sum); returns which ranges were read whole. A range
    /// that fails leaves its bytes unspecified and does not stop the others.
    fn read_many(&self, ranges: &[(u64, usize)], buf: &mut [u8]) -> Vec<bool> {
        let mut at = 0;
        ranges
            .iter()
            .map(|&(addr, len)| {
                let Some(part) = buf.get_mut(at..at + len) else {
                    return false;
                };
                at += len;
                self.read(addr, part).is_ok()
            })
            .collect()
    }
}

/// Ranges per `process_vm_readv` call (the kernel's `IOV_MAX`).
const IOV_MAX: usize = 1024;

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

    /// One `process_vm_readv` per 1024 ranges (a read of one range costs ~2 µs, of a range
    /// in a batch ~0.5 µs). The kernel stops a batch at the first range it cannot read in
    /// full; the batch resumes after it.
    fn read_many(&self, ranges: &[(u64, usize)], buf: &mut [u8]) -> Vec<bool> {
        let mut ok = vec![false; ranges.len()];
        let total: usize = ranges.iter().map(|r| r.1).sum();
        if total > buf.len() {
            return ok;
        }
        let mut offsets = Vec::with_capacity(ranges.len());
        let mut at = 0;
        for r in ranges {
            offsets.push(at);
            at += r.1;
        }
        let mut first = 0;
        while first < ranges.len() {
            let last = (first + IOV_MAX).min(ranges.len());
            let read = match self.read_batch(&ranges[first..last], &mut buf[offsets[first]..at]) {
                Ok(n) => n,
                // Gone: no later range can be read either.
                Err(nix::errno::Errno::ESRCH) => break,
                Err(_) => 0,
            };
            // Ranges read whole, then the one that stopped the batch (if any) is skipped.
            let mut got = read;
            let mut i = first;
            while i < last && got >= ranges[i].1 {
                got -= ranges[i].1;
                ok[i] = true;
                i += 1;
            }
            // A whole batch read: the next begins at its end; else past the range that
            // stopped it.
            first = if i == last { last } else { i + 1 };
        }
        ok
    }
}

impl ProcessMemory {
    /// Bytes `process_vm_readv` copied for `ranges` into `buf`.
    fn read_batch(&self, ranges: &[(u64, usize)], buf: &mut [u8]) -> nix::Result<usize> {
        let mut remote = Vec::with_capacity(ranges.len());
        let mut local = Vec::with_capacity(ranges.len());
        let mut rest = buf;
        for &(addr, len) in ranges {
            let Ok(base) = usize::try_from(addr) else {
                break;
            };
            let n = len.min(rest.len());
            let (part, tail) = std::mem::take(&mut rest).split_at_mut(n);
            rest = tail;
            remote.push(nix::sys::uio::RemoteIoVec {
                base,
                len: part.len(),
            });
            local.push(std::io::IoSliceMut::new(part));
        }
        nix::sys::uio::process_vm_readv(self.pid, &mut local, &remote)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Our own memory through `process_vm_readv`: batches of more than `IOV_MAX` ranges,
    /// unreadable ranges among them, and empty ones.
    #[test]
    fn many_reads_fill_each_range_and_skip_only_the_unreadable_ones() {
        let data: Vec<u64> = (0..3000u64).map(|i| i * 0x0101_0101).collect();
        let base = data.as_ptr() as u64;
        let mut ranges = Vec::new();
        let mut want = Vec::new();
        for i in 0..2500u64 {
            match i % 7 {
                // Unmapped: the kernel stops the batch there; the rest must still be read.
                3 => ranges.push((8, 8)),
                5 => ranges.push((base + 8 * i, 0)),
                _ => ranges.push((base + 8 * i, 8 * (1 + i as usize % 3))),
            }
            want.push(i % 7 != 3);
        }
        let total = ranges.iter().map(|r| r.1).sum();
        let mut buf = vec![0u8; total];
        let mem = ProcessMemory::new(std::process::id());
        let ok = mem.read_many(&ranges, &mut buf);
        assert_eq!(ok, want);
        let mut at = 0;
        for (&(addr, len), ok) in ranges.iter().zip(&ok) {
            if *ok && len > 0 {
                let first = u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"));
                assert_eq!(first, data[((addr - base) / 8) as usize]);
            }
            at += len;
        }
        // Every range readable, more than one batch: none is skipped between two batches
        // (the first range after a whole batch once was).
        let all: Vec<(u64, usize)> = (0..2500u64).map(|i| (base + 8 * i, 8)).collect();
        let mut whole = vec![0u8; all.len() * 8];
        assert!(mem.read_many(&all, &mut whole).iter().all(|&b| b));
        assert_eq!(
            whole[IOV_MAX * 8..IOV_MAX * 8 + 8],
            data[IOV_MAX].to_le_bytes()
        );
        // The default (one read a range) agrees.
        let buffer = BufferMemory {
            base,
            bytes: data.iter().flat_map(|w| w.to_le_bytes()).collect(),
        };
        let mut other = vec![0u8; total];
        assert_eq!(buffer.read_many(&ranges, &mut other), want);
    }
}
