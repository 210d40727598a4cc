//! `tokenvend.v1.GetTokenResponse`, written by hand instead of generated, for one reason: a
//! cached token's answer is the same bytes for every caller until the token is replaced, so
//! the server encodes it once and hands those bytes to every later caller (a reference
//! count, no allocation, no encoding). On the wire and for clients it is the message the
//! proto declares; the unit tests below hold it to the generated encoding.

use prost::{
    DecodeError, Message,
    bytes::{Buf, BufMut, Bytes},
    encoding::{self, DecodeContext, WireType},
};

#[derive(Clone, Default, PartialEq)]
pub struct GetTokenResponse {
    pub access_token: String,
    /// Always "Bearer", whatever case the provider used.
    pub token_type: String,
    /// Unset for a static API key, which does not expire.
    pub expires_at: Option<prost_types::Timestamp>,
    /// Scopes granted by the provider (or the requested ones when it did not say).
    pub scopes: Vec<String>,
    /// When set, the whole encoding, and the fields above are empty.
    encoded: Option<Bytes>,
}

impl GetTokenResponse {
    pub fn new(
        access_token: String,
        token_type: String,
        expires_at: Option<prost_types::Timestamp>,
        scopes: Vec<String>,
    ) -> Self {
        Self {
            access_token,
            token_type,
            expires_at,
            scopes,
            encoded: None,
        }
    }

    /// An answer already encoded (by [`GetTokenResponse::to_bytes`]).
    pub fn pre_encoded(bytes: Bytes) -> Self {
        Self {
            encoded: Some(bytes),
            ..Self::default()
        }
    }

    /// The encoding, to be served again with [`GetTokenResponse::pre_encoded`].
    pub fn to_bytes(&self) -> Bytes {
        self.encode_to_vec().into()
    }
}

impl std::fmt::Debug for GetTokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GetTokenResponse")
            .field("access_token", &"[redacted]")
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .field("scopes", &self.scopes)
            .field("pre_encoded", &self.encoded.is_some())
            .finish()
    }
}

impl Message for GetTokenResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if let Some(bytes) = &self.encoded {
            buf.put_slice(bytes);
            return;
        }
        if !self.access_token.is_empty() {
            encoding::string::encode(1, &self.access_token, buf);
        }
        if !self.token_type.is_empty() {
            encoding::string::encode(2, &self.token_type, buf);
        }
        if let Some(at) = &self.expires_at {
            encoding::message::encode(3, at, buf);
        }
        encoding::string::encode_repeated(4, &self.scopes, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let field = match tag {
            1 => encoding::string::merge(wire_type, &mut self.access_token, buf, ctx),
            2 => encoding::string::merge(wire_type, &mut self.token_type, buf, ctx),
            3 => encoding::message::merge(
                wire_type,
                self.expires_at.get_or_insert_with(Default::default),
                buf,
                ctx,
            ),
            4 => encoding::string::merge_repeated(wire_type, &mut self.scopes, buf, ctx),
            _ => return encoding::skip_field(wire_type, tag, buf, ctx),
        };
        field.map_err(|mut e| {
            let name = ["access_token", "token_type", "expires_at", "scopes"][tag as usize - 1];
            e.push("GetTokenResponse", name);
            e
        })
    }

    fn encoded_len(&self) -> usize {
        if let Some(bytes) = &self.encoded {
            return bytes.len();
        }
        let string = |tag, s: &String| {
            if s.is_empty() {
                0
            } else {
                encoding::string::encoded_len(tag, s)
            }
        };
        string(1, &self.access_token)
            + string(2, &self.token_type)
            + self
                .expires_at
                .as_ref()
                .map_or(0, |at| encoding::message::encoded_len(3, at))
            + encoding::string::encoded_len_repeated(4, &self.scopes)
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What prost generates from the proto, as the reference.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Generated {
        #[prost(string, tag = "1")]
        access_token: String,
        #[prost(string, tag = "2")]
        token_type: String,
        #[prost(message, optional, tag = "3")]
        expires_at: Option<prost_types::Timestamp>,
        #[prost(string, repeated, tag = "4")]
        scopes: Vec<String>,
    }

    fn samples() -> Vec<Generated> {
        let at = Some(prost_types::Timestamp {
            seconds: 1_900_000_000,
            nanos: 123_456_789,
        });
        vec![
            Generated::default(),
            Generated {
                access_token: "t".repeat(200),
                token_type: "Bearer".into(),
                expires_at: at,
                scopes: vec!["read".into(), "write".into()],
            },
            Generated {
                access_token: "k".into(),
                token_type: "Bearer".into(),
                expires_at: None,
                scopes: vec![String::new(), "é".into()],
            },
            Generated {
                access_token: "x".repeat(70_000),
                token_type: String::new(),
                expires_at: Some(prost_types::Timestamp::default()),
                scopes: vec![],
            },
        ]
    }

    fn ours(g: &Generated) -> GetTokenResponse {
        GetTokenResponse {
            access_token: g.access_token.clone(),
            token_type: g.token_type.clone(),
            expires_at: g.expires_at,
            scopes: g.scopes.clone(),
            encoded: None,
        }
    }

    #[test]
    fn encodes_and_decodes_as_the_generated_message() {
        for g in samples() {
            let reference = g.encode_to_vec();
            let mine = ours(&g);
            assert_eq!(mine.encode_to_vec(), reference);
            assert_eq!(mine.encoded_len(), reference.len());
            assert_eq!(GetTokenResponse::decode(&reference[..]).unwrap(), mine);
            // Pre-encoded: the same bytes, length and decoding.
            let pre = GetTokenResponse::pre_encoded(mine.to_bytes());
            assert_eq!(pre.encode_to_vec(), reference);
            assert_eq!(pre.encoded_len(), reference.len());
            assert_eq!(
                Generated::decode(&pre.encode_to_vec()[..]).unwrap(),
                g,
                "a generated client reads it"
            );
        }
    }

    #[test]
    fn unknown_fields_are_skipped_and_bad_ones_named() {
        let mut bytes = ours(&samples()[1]).encode_to_vec();
        encoding::uint64::encode(9, &7, &mut bytes);
        assert_eq!(
            GetTokenResponse::decode(&bytes[..]).unwrap(),
            ours(&samples()[1])
        );
        // Field 1 as a varint: the error names it.
        let mut bad = Vec::new();
        encoding::uint64::encode(1, &7, &mut bad);
        let e = GetTokenResponse::decode(&bad[..]).unwrap_err();
        assert!(e.to_string().contains("access_token"), "{e}");
    }

    #[test]
    fn debug_hides_the_token() {
        let shown = format!("{:?}", ours(&samples()[1]));
        assert!(!shown.contains("tttt"), "{shown}");
    }
}
