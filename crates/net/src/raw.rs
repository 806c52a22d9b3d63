//! Raw gRPC calls: any message bytes to any method. For probes and hostile-input tests, which
//! must send what no generated client would (oversized, malformed or misrouted bodies).

use std::str::FromStr;
use std::time::Duration;

use bytes::{Buf, BufMut};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// A codec whose messages are their own wire bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

/// Sends `body` to the unary method `/{service}/{method}` and waits at most `wait` for the
/// answer (a long poll that is still waiting then is answered DEADLINE_EXCEEDED).
pub async fn call(
    channel: &tonic::transport::Channel,
    service: &str,
    method: &str,
    body: Vec<u8>,
    wait: Duration,
) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone())
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::from_str(&format!("/{service}/{method}"))
        .map_err(|e| Status::internal(e.to_string()))?;
    let call = grpc.unary(tonic::Request::new(body), path, RawCodec);
    match tokio::time::timeout(wait, call).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded("no answer in time")),
    }
}

/// A protobuf field `number` holding `len` bytes of `b'A'` (wire type 2): a body of any size
/// whose content no server should ever need to read.
pub fn long_field(number: u32, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    prost::encoding::encode_key(number, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(len as u64, &mut out);
    out.resize(out.len() + len, b'A');
    out
}

/// A random or boundary request body for a method whose limit is `limit` bytes: empty, random
/// bytes, a field just under or just over the limit, thousands of empty repeated elements,
/// deep nesting, an over-long varint, a group wire type.
pub fn hostile_body(rng: &mut impl rand::Rng, limit: usize) -> Vec<u8> {
    match rng.gen_range(0..8) {
        0 => Vec::new(),
        1 => (0..rng.gen_range(1..256)).map(|_| rng.r#gen()).collect(),
        2 => long_field(rng.gen_range(1..8), limit.saturating_sub(8)),
        3 => long_field(rng.gen_range(1..8), limit + 1),
        4 => [0x12, 0].repeat(rng.gen_range(1..20_000)),
        5 => {
            let mut b = vec![0x0a, 0];
            for _ in 0..rng.gen_range(1..200) {
                let mut outer = vec![0x0a];
                prost::encoding::encode_varint(b.len() as u64, &mut outer);
                outer.extend_from_slice(&b);
                b = outer;
            }
            b
        }
        6 => [&[0x08][..], &[0xff; 11]].concat(),
        _ => vec![0x0b, 0x12, 0x7f, 1, 2],
    }
}
