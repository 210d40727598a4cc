//! prost's gRPC codec with small per-call buffers.
//!
//! tonic's default settings allocate 8 KiB to decode each request and 8 KiB to encode each
//! answer, for messages that are mostly a few hundred bytes: two large allocations per call
//! on the GetToken hot path (`crates/server/benches/hot_path.rs` counts them). The buffers
//! start at 1 KiB here and grow as a message needs (a long token, a large admin request).

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Where a call's buffers start.
const BUFFER_SIZE: usize = 1024;
/// tonic's own default: how much a stream batches before yielding (no streams here yet).
const YIELD_THRESHOLD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

/// Used by the generated clients and servers (`codec_path` in `build.rs`).
#[derive(Debug, Clone)]
pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}
