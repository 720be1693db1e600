//! Ring buffer -> decoded call events. The BPF side submits without waking us up except
//! when the buffer fills past a watermark, so the session drains on a short timer tick and on
//! readiness; each drain empties the buffer in one pass.

use aya::maps::{MapData, RingBuf};
use profilemate_common::{record_kind, ApiId, CudaCallRecord, FLAG_OUT_VALID};
use tokio::io::unix::AsyncFd;

/// What happened at a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallPhase {
    /// Function entry with its six integer argument registers.
    Entry {
        /// rdi, rsi, rdx, rcx, r8, r9.
        args: [u64; 6],
    },
    /// Function return.
    Return {
        /// rax.
        ret: u64,
        /// Value read through the out-parameter pointer, when there is one and it was readable.
        out: Option<u64>,
    },
}

/// One decoded probe hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallEvent {
    /// CLOCK_MONOTONIC ns.
    pub ts_ns: u64,
    /// Process.
    pub pid: u32,
    /// Thread.
    pub tid: u32,
    /// Which symbol.
    pub api: ApiId,
    /// Entry or return.
    pub phase: CallPhase,
}

/// A ring-buffer record this build cannot interpret (counted, never dropped silently).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Wrong size (object/userspace mismatch).
    #[error("record of {0} bytes, expected {expected}", expected = core::mem::size_of::<CudaCallRecord>())]
    Size(usize),
    /// Unknown API id.
    #[error("unknown api id {0}")]
    Api(u16),
    /// Unknown record kind.
    #[error("unknown record kind {0}")]
    Kind(u16),
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<CallEvent, DecodeError> {
    if bytes.len() != core::mem::size_of::<CudaCallRecord>() {
        return Err(DecodeError::Size(bytes.len()));
    }
    // SAFETY: the length is checked above; CudaCallRecord is Pod (any bit pattern is valid) and
    // read_unaligned makes no alignment assumption about the ring buffer slice.
    let rec: CudaCallRecord = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let api = ApiId::from_u16(rec.api).ok_or(DecodeError::Api(rec.api))?;
    let phase = match rec.kind {
        record_kind::ENTRY => CallPhase::Entry { args: rec.args },
        record_kind::RETURN => CallPhase::Return {
            ret: rec.args[0],
            out: (rec.flags & FLAG_OUT_VALID != 0).then_some(rec.args[1]),
        },
        k => return Err(DecodeError::Kind(k)),
    };
    Ok(CallEvent {
        ts_ns: rec.ts_ns,
        pid: rec.tgid,
        tid: rec.tid,
        api,
        phase,
    })
}

/// Encodes an event the way the kernel side does (tests and benchmarks feed the pipeline).
#[must_use]
pub fn encode(ev: &CallEvent) -> CudaCallRecord {
    let (kind, flags, args) = match ev.phase {
        CallPhase::Entry { args } => (record_kind::ENTRY, 0, args),
        CallPhase::Return { ret, out } => (
            record_kind::RETURN,
            if out.is_some() { FLAG_OUT_VALID } else { 0 },
            [ret, out.unwrap_or(0), 0, 0, 0, 0],
        ),
    };
    CudaCallRecord {
        kind,
        api: ev.api as u16,
        tgid: ev.pid,
        tid: ev.tid,
        flags,
        ts_ns: ev.ts_ns,
        args,
    }
}

/// The ring buffer registered with the tokio reactor.
pub struct Drain {
    ring: AsyncFd<RingBuf<MapData>>,
    /// Records that failed to decode.
    pub decode_errors: u64,
    /// Records read.
    pub records: u64,
}

impl Drain {
    /// Wraps the ring buffer; must run inside a tokio runtime.
    pub fn new(ring: RingBuf<MapData>) -> std::io::Result<Self> {
        // SAFETY: the ring buffer owns its fd and lives inside the AsyncFd until it is dropped,
        // so the registered fd is never closed or reused while registered.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Self {
            ring,
            decode_errors: 0,
            records: 0,
        })
    }

    /// Waits until the kernel signals data (the BPF side only signals past its watermark).
    pub async fn readable(&self) -> std::io::Result<()> {
        let mut guard = self.ring.readable().await?;
        guard.clear_ready();
        Ok(())
    }

    /// Reads up to `max` records from the ring buffer, handing each event to `sink`; returns
    /// how many were read.
    pub fn drain(&mut self, max: usize, mut sink: impl FnMut(CallEvent)) -> usize {
        let ring = self.ring.get_mut();
        let mut n = 0;
        while n < max {
            let Some(item) = ring.next() else { break };
            n += 1;
            match decode(&item) {
                Ok(ev) => sink(ev),
                Err(_) => self.decode_errors += 1,
            }
        }
        self.records += n as u64;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_round_trips_entry_and_return() {
        for ev in [
            CallEvent {
                ts_ns: 5,
                pid: 1,
                tid: 2,
                api: ApiId::cudaGraphLaunch,
                phase: CallPhase::Entry {
                    args: [1, 2, 3, 4, 5, 6],
                },
            },
            CallEvent {
                ts_ns: 9,
                pid: 1,
                tid: 2,
                api: ApiId::cudaStreamEndCapture,
                phase: CallPhase::Return {
                    ret: 0,
                    out: Some(0xabc),
                },
            },
            CallEvent {
                ts_ns: 9,
                pid: 1,
                tid: 2,
                api: ApiId::cudaEventSynchronize,
                phase: CallPhase::Return { ret: 0, out: None },
            },
        ] {
            let rec = encode(&ev);
            // SAFETY: CudaCallRecord is repr(C) plain data; viewing it as bytes is sound.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    (&rec as *const CudaCallRecord).cast::<u8>(),
                    size_of::<CudaCallRecord>(),
                )
            };
            assert_eq!(decode(bytes), Ok(ev));
        }
    }

    #[test]
    fn decode_rejects_garbage() {
        assert_eq!(decode(&[0u8; 10]), Err(DecodeError::Size(10)));
        let mut rec = CudaCallRecord {
            kind: 1,
            api: 999,
            ..Default::default()
        };
        // SAFETY: as above.
        let view = |r: &CudaCallRecord| {
            unsafe {
                std::slice::from_raw_parts(
                    (r as *const CudaCallRecord).cast::<u8>(),
                    size_of::<CudaCallRecord>(),
                )
            }
            .to_vec()
        };
        assert_eq!(decode(&view(&rec)), Err(DecodeError::Api(999)));
        rec.api = 0;
        rec.kind = 7;
        assert_eq!(decode(&view(&rec)), Err(DecodeError::Kind(7)));
    }
}
