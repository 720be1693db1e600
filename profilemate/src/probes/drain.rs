//! Ring-buffer records -> typed events: the decoders of every record kind (the reader thread
//! in `reader` calls them), and the encoder tests and benchmarks use to feed the pipeline.
//!
//! Owns the record formats' decoding; not reading the ring (`reader`) nor what the events
//! mean (`correlate`).

use profilemate_common::{
    python::{stack_reason, PyFrame, PyStackRecord, UsdtRecord},
    record_kind, ApiId, CudaCallRecord, FLAG_OUT_VALID,
};

pub use crate::model::stack::StackReason;

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

/// One walked Python stack (frames innermost first, not yet symbolized).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackEvent {
    /// CLOCK_MONOTONIC ns (equal to the CUDA call's for `CudaCall`).
    pub ts_ns: u64,
    /// Process.
    pub pid: u32,
    /// Thread.
    pub tid: u32,
    /// Sample or CUDA call.
    pub reason: StackReason,
    /// `stack_flags::*`.
    pub flags: u16,
    /// Time the walk took from `ts_ns` (inside the CUDA call for `CudaCall`).
    pub walk_ns: u32,
    /// Frames, innermost first.
    pub frames: Vec<PyFrame>,
}

/// One USDT probe hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsdtEvent {
    /// CLOCK_MONOTONIC ns.
    pub ts_ns: u64,
    /// Process.
    pub pid: u32,
    /// Thread.
    pub tid: u32,
    /// `usdt_probe::*`.
    pub probe: u16,
    /// Decoded arguments.
    pub args: [u64; 3],
    /// Bit i: argument i unreadable.
    pub failed_args: u32,
}

/// Any decoded ring-buffer record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A CUDA API entry or return.
    Call(CallEvent),
    /// A Python stack.
    Stack(StackEvent),
    /// A USDT hit.
    Usdt(UsdtEvent),
}

/// A ring-buffer record this build cannot interpret (counted, never dropped silently).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Wrong size for its kind (object/userspace mismatch).
    #[error("record of {0} bytes does not fit its kind")]
    Size(usize),
    /// Unknown API id.
    #[error("unknown api id {0}")]
    Api(u16),
    /// Unknown record kind.
    #[error("unknown record kind {0}")]
    Kind(u16),
}

/// Reads a plain-data record of exactly `size_of::<T>()` bytes.
fn read_pod<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() != core::mem::size_of::<T>() {
        return Err(DecodeError::Size(bytes.len()));
    }
    // SAFETY: the length is checked; every record type is repr(C) integers only (any bit
    // pattern is valid), and read_unaligned makes no alignment assumption.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Decodes any ring-buffer record by its leading kind.
pub fn decode_record(bytes: &[u8]) -> Result<Record, DecodeError> {
    let kind = bytes
        .get(..2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or(DecodeError::Size(bytes.len()))?;
    match kind {
        record_kind::ENTRY | record_kind::RETURN => decode(bytes).map(Record::Call),
        record_kind::PY_STACK => decode_stack(bytes).map(Record::Stack),
        record_kind::USDT => {
            let r: UsdtRecord = read_pod(bytes)?;
            Ok(Record::Usdt(UsdtEvent {
                ts_ns: r.ts_ns,
                pid: r.tgid,
                tid: r.tid,
                probe: r.probe,
                args: r.args,
                failed_args: r.failed_args,
            }))
        }
        k => Err(DecodeError::Kind(k)),
    }
}

/// Decodes a Python stack record; only its valid frames are copied.
pub fn decode_stack(bytes: &[u8]) -> Result<StackEvent, DecodeError> {
    let r: PyStackRecord = read_pod(bytes)?;
    let reason = match r.reason {
        stack_reason::SAMPLE => StackReason::Sample,
        stack_reason::CUDA_CALL => {
            StackReason::CudaCall(ApiId::from_u16(r.api).ok_or(DecodeError::Api(r.api))?)
        }
        stack_reason::BREAKPOINT => StackReason::Breakpoint(r.api),
        k => return Err(DecodeError::Kind(k)),
    };
    let depth = usize::from(r.depth).min(r.frames.len());
    Ok(StackEvent {
        ts_ns: r.ts_ns,
        pid: r.tgid,
        tid: r.tid,
        reason,
        flags: r.flags,
        walk_ns: r.walk_ns,
        frames: r.frames[..depth].to_vec(),
    })
}

/// Decodes one CUDA call record.
pub fn decode(bytes: &[u8]) -> Result<CallEvent, DecodeError> {
    let rec: CudaCallRecord = read_pod(bytes)?;
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
