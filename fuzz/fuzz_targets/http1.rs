//! The connection guard's HTTP/1 framing: never a panic; a head it accepts
//! is one httparse (strict) reads the same way; a chunked body gives the
//! same verdict however its bytes are split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_gateway::guard::framing::{check_head, scan_head, ChunkedBody, HeadLimits, Progress, Scan};

const LIMITS: HeadLimits = HeadLimits { max_target: 2048, max_head: 8192, max_fields: 64 };

fn feed(bytes: &[u8], split: usize) -> Progress {
    let mut body = ChunkedBody::default();
    let mut offset = 0;
    for piece in bytes.chunks(split.max(1)) {
        match body.feed(piece) {
            Progress::NeedMore => offset += piece.len(),
            Progress::Done { consumed } => return Progress::Done { consumed: offset + consumed },
            other => return other,
        }
    }
    Progress::NeedMore
}

fuzz_target!(|input: (u8, &[u8])| {
    let (split, bytes) = input;
    if let Scan::Complete { start, end } = scan_head(bytes, &LIMITS) {
        let head = &bytes[start..end];
        if let Ok(_checked) = check_head(head, &LIMITS) {
            let mut fields = [httparse::EMPTY_HEADER; 80];
            let mut request = httparse::Request::new(&mut fields);
            match request.parse(head) {
                Ok(httparse::Status::Complete(n)) => assert_eq!(n, head.len()),
                other => panic!("accepted a head httparse reads as {other:?}"),
            }
        }
    }
    let whole = feed(bytes, bytes.len());
    let pieces = feed(bytes, usize::from(split));
    match (&whole, &pieces) {
        (Progress::Refused(a), Progress::Refused(b)) => assert_eq!(a.status, b.status),
        _ => assert_eq!(whole, pieces),
    }
});
