//! Ring-buffer records -> events (`drain::decode_record` and the per-kind decoders), as the
//! reader thread decodes whatever the ring hands it. A decoded CUDA call must survive
//! encode -> decode unchanged; a stack keeps at most the frames the record holds.
//!
//! Input: one record's bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use profilemate::probes::drain::{decode, decode_record, decode_stack, encode, Record};
use profilemate_common::{
    python::{PyStackRecord, MAX_PY_FRAMES},
    CudaCallRecord,
};

fuzz_target!(|data: &[u8]| {
    let record = decode_record(data);
    let _ = decode(data);
    let _ = decode_stack(data);
    match record {
        Ok(Record::Call(ev)) => {
            let rec = encode(&ev);
            assert_eq!(
                decode(as_bytes(&rec)),
                Ok(ev),
                "encode -> decode round trip"
            );
        }
        Ok(Record::Stack(st)) => {
            let capacity = std::mem::size_of::<PyStackRecord>();
            assert_eq!(data.len(), capacity);
            assert!(
                st.frames.len() <= MAX_PY_FRAMES,
                "{} frames",
                st.frames.len()
            );
        }
        Ok(Record::Usdt(_)) | Err(_) => {}
    }
});

/// The bytes of a record as the kernel side writes it.
fn as_bytes(rec: &CudaCallRecord) -> &[u8] {
    // SAFETY: CudaCallRecord is repr(C) plain integers; viewing it as bytes is sound.
    unsafe {
        std::slice::from_raw_parts(
            (rec as *const CudaCallRecord).cast::<u8>(),
            std::mem::size_of::<CudaCallRecord>(),
        )
    }
}
