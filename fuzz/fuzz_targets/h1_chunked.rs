//! The one body decoder (`proto::h1::body::Decoder`) on the chunked coding, fed in pieces
//! split at arbitrary points, against the reference decoder of src/lib.rs given the whole
//! input at once.
//!
//! Input: a count `k` (first byte, mod 8), `k` piece lengths (a byte each, plus one), then
//! the body as sent; what the lengths do not cover is the last piece.
//!
//! Checked: no panic; the result does not depend on where the reads split. Where the codec
//! ends the body, the reference ends it at the same byte with the same data (else the two
//! sides of a connection would disagree on where the next message starts). Where the codec
//! refuses, the reference refuses too, or the input passes one of the codec's limits.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use portico::fuzzing::{BodyDecoder, Framing, Piece};
use portico_fuzz::{Chunked, chunked};

/// The codec's own limits: refusing past them is not a disagreement.
const LIMITS: [&str; 3] = ["chunk size too large", "chunk size line too long", "trailers too large"];

fuzz_target!(|data: &[u8]| {
    let Some((&k, rest)) = data.split_first() else { return };
    let k = usize::from(k % 8).min(rest.len());
    let (lens, body) = rest.split_at(k);
    let mut pieces = Vec::new();
    let mut at = 0;
    for &l in lens {
        let end = (at + usize::from(l) + 1).min(body.len());
        pieces.push(&body[at..end]);
        at = end;
    }
    pieces.push(&body[at..]);

    let mut d = BodyDecoder::new(Framing::Chunked);
    let (mut buf, mut out) = (BytesMut::new(), Vec::new());
    let mut fed = 0;
    let mut next = pieces.into_iter();
    let codec = loop {
        match d.decode(&mut buf) {
            Ok(Piece::Data(b)) => {
                assert!(!b.is_empty(), "an empty data piece");
                out.extend_from_slice(&b);
            }
            Ok(Piece::End) => {
                assert!(d.is_done() && d.remaining() == Some(0));
                break Ok(fed - buf.len());
            }
            Ok(Piece::Need) => match next.next() {
                Some(p) => {
                    buf.extend_from_slice(p);
                    fed += p.len();
                }
                None => break Err(None),
            },
            Err(e) => break Err(Some(e)),
        }
    };
    let reference = chunked(body);
    match (codec, reference) {
        (Ok(end), Chunked::Complete(want, want_end)) => {
            assert_eq!(end, want_end, "the body ends at a different byte");
            assert_eq!(out, want, "different data");
        }
        (Ok(end), other) => panic!("the codec ends the body at {end}, the reference says {other:?}"),
        (Err(None), Chunked::Complete(_, end)) => panic!("the codec waits for more, the reference ends at {end}"),
        (Err(None), _) => {}
        (Err(Some(e)), Chunked::Complete(..) | Chunked::Incomplete) => {
            assert!(LIMITS.contains(&e), "the codec refuses ({e}) what the reference takes");
        }
        (Err(Some(_)), Chunked::Invalid(_)) => {}
    }
});
