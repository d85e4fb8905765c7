//! Repair of the HTTP/2 `:authority` that many gRPC clients send on a Unix socket.
//!
//! gRPC clients built on grpc-core (Python `grpcio`, C++, Ruby), grpc-java and
//! grpc-swift send the percent-encoded socket path (`tmp%2Fagent.sock`,
//! `%2Frun%2Fleash%2Fagent.sock`) as `:authority` when they dial a Unix socket. The HTTP/2
//! server underneath tonic (`h2`, through the `http` crate's URI parser) refuses such an
//! authority (`%` is allowed only in userinfo, `/` not at all) and resets the stream with
//! PROTOCOL_ERROR before any service sees the request; it has no option to accept it. On
//! a Unix socket the authority carries nothing (the peer is the process at the other end,
//! attested by its credentials), so this layer, on the client-to-server bytes of every
//! gRPC connection of the workload socket, replaces an `:authority` the `http` crate
//! would refuse with `localhost` (what grpc-go sends) and passes everything else on.
//!
//! How: the byte stream is cut into HTTP/2 frames. Every frame but HEADERS and
//! CONTINUATION is passed through byte for byte, as it arrives (DATA is never buffered).
//! A header block (a HEADERS frame and its CONTINUATIONs) is collected whole and decoded
//! with an HPACK decoder that follows the client's encoder for the connection's life.
//! Until a block needs a repair, blocks are passed on as they came (the server's HPACK
//! state is then the client's): a client that sends a valid authority costs one decode
//! per request. From the first repaired block on, every block of the connection is
//! re-encoded as plain literals that never enter the server's dynamic table, so the
//! server's table stays as it was and can never be referred to wrongly, whatever the
//! client indexes. A re-encoded block goes out as a HEADERS frame (same stream,
//! END_STREAM and priority kept, padding dropped) and as many CONTINUATIONs as the least
//! frame size every server accepts requires.
//!
//! Memory is bounded (a header block, with its frame headers, and a decoded header list
//! are at most 64 KiB; the server itself refuses header lists over 16 KiB). Input that breaks the framing rules
//! the server would also enforce (a header block interleaved with another frame, bad
//! padding, PUSH_PROMISE from a client, bad HPACK) is an error: the connection is closed,
//! as the server would have closed it.

use super::hpack::{self, Decoder, HpackError};

/// What an `:authority` the `http` crate refuses is replaced with.
pub const REPLACEMENT: &[u8] = b"localhost";

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// SETTINGS_HEADER_TABLE_SIZE the server advertises: the protocol's default, which the
/// agent's server (tonic over hyper) keeps. A client's HPACK table never exceeds it.
pub const SERVER_HEADER_TABLE_SIZE: usize = 4096;

/// The largest header block accepted: its frames as received, headers included.
pub const MAX_BLOCK: usize = 64 * 1024;

/// The largest decoded header list accepted (as HPACK weighs it). The server answers
/// lists over its own limit (16 KiB) with an error on the stream; past this one the
/// connection is closed instead.
pub const MAX_LIST: usize = 64 * 1024;

/// The largest frame payload written: SETTINGS_MAX_FRAME_SIZE's least allowed value, so
/// every server accepts it whatever it advertised.
const OUT_FRAME: usize = 16_384;

const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// Why a connection's input could not be passed on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorityError {
    /// The connection did not open with the HTTP/2 preface.
    #[error("the connection did not open with the HTTP/2 preface")]
    Preface,
    /// A frame other than CONTINUATION in the middle of a header block.
    #[error(
        "a frame of type {kind:#x} on stream {stream} came inside the header block of stream \
         {open} (only CONTINUATION may)"
    )]
    Interleaved {
        /// Its type.
        kind: u8,
        /// Its stream.
        stream: u32,
        /// The stream whose header block is unfinished.
        open: u32,
    },
    /// CONTINUATION with no header block open.
    #[error("CONTINUATION on stream {0} with no header block before it")]
    StrayContinuation(u32),
    /// HEADERS on stream 0.
    #[error("HEADERS on stream 0")]
    StreamZero,
    /// Padding or priority fields longer than the frame.
    #[error("HEADERS on stream {0} has padding or priority fields longer than the frame")]
    Padding(u32),
    /// Clients never send PUSH_PROMISE (RFC 9113 §8.4).
    #[error("PUSH_PROMISE on stream {0} from a client")]
    PushPromise(u32),
    /// A header block over [`MAX_BLOCK`].
    #[error("the header block of stream {0} is over {MAX_BLOCK} bytes")]
    BlockTooLarge(u32),
    /// The header block is not valid HPACK.
    #[error("the header block of stream {stream}: {source}")]
    Hpack {
        /// The stream.
        stream: u32,
        /// What was wrong.
        source: HpackError,
    },
}

/// Where in the input the layer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Within the preface; this many bytes of it seen.
    Preface(usize),
    /// Reading a frame header (9 bytes).
    Head,
    /// Passing through this many more payload bytes.
    Pass(usize),
    /// Collecting this many more payload bytes of a HEADERS or CONTINUATION frame.
    Collect(usize),
}

/// A header block being collected.
#[derive(Debug)]
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

/// The client-to-server half of one HTTP/2 connection, with `:authority` repaired.
#[derive(Debug)]
pub struct AuthorityFix {
    state: State,
    head: [u8; 9],
    head_len: usize,
    /// Type, flags and stream of the frame being collected.
    frame: (u8, u8, u32),
    payload: Vec<u8>,
    block: Option<Block>,
    /// The frames of the block being collected, as received.
    raw: Vec<u8>,
    /// Set from the first repaired block on: every later block is re-encoded too.
    rewriting: bool,
    decoder: Decoder,
    replaced: u64,
}

impl Default for AuthorityFix {
    fn default() -> Self {
        AuthorityFix::new()
    }
}

impl AuthorityFix {
    /// A layer for a new connection (which starts with the preface).
    pub fn new() -> AuthorityFix {
        AuthorityFix {
            state: State::Preface(0),
            head: [0; 9],
            head_len: 0,
            frame: (0, 0, 0),
            payload: Vec::new(),
            block: None,
            raw: Vec::new(),
            rewriting: false,
            decoder: Decoder::new(SERVER_HEADER_TABLE_SIZE, MAX_LIST),
            replaced: 0,
        }
    }

    /// How many `:authority` values were replaced so far.
    #[cfg(test)]
    pub fn replaced(&self) -> u64 {
        self.replaced
    }

    /// Take the next bytes from the client; append what the server should read instead
    /// to `out`. Bytes of an unfinished frame header or header block are kept for the
    /// next call. After an error the connection must be closed.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), AuthorityError> {
        while !input.is_empty() {
            match self.state {
                State::Preface(seen) => {
                    let k = (PREFACE.len() - seen).min(input.len());
                    if input[..k] != PREFACE[seen..seen + k] {
                        return Err(AuthorityError::Preface);
                    }
                    out.extend_from_slice(&input[..k]);
                    input = &input[k..];
                    self.state = if seen + k == PREFACE.len() {
                        State::Head
                    } else {
                        State::Preface(seen + k)
                    };
                }
                State::Head => {
                    let k = (9 - self.head_len).min(input.len());
                    self.head[self.head_len..self.head_len + k].copy_from_slice(&input[..k]);
                    self.head_len += k;
                    input = &input[k..];
                    if self.head_len == 9 {
                        self.head_len = 0;
                        self.start_frame(out)?;
                    }
                }
                State::Pass(left) => {
                    let k = left.min(input.len());
                    out.extend_from_slice(&input[..k]);
                    input = &input[k..];
                    self.state = if left == k {
                        State::Head
                    } else {
                        State::Pass(left - k)
                    };
                }
                State::Collect(left) => {
                    let k = left.min(input.len());
                    self.payload.extend_from_slice(&input[..k]);
                    input = &input[k..];
                    if left == k {
                        self.end_frame(out)?;
                    } else {
                        self.state = State::Collect(left - k);
                    }
                }
            }
        }
        Ok(())
    }

    /// A frame header is complete: pass it on, or start collecting its payload.
    fn start_frame(&mut self, out: &mut Vec<u8>) -> Result<(), AuthorityError> {
        let h = self.head;
        let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        let (kind, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5] & 0x7f, h[6], h[7], h[8]]);
        if let Some(b) = &self.block {
            if kind != CONTINUATION {
                return Err(AuthorityError::Interleaved {
                    kind,
                    stream,
                    open: b.stream,
                });
            }
        }
        match kind {
            HEADERS | CONTINUATION => {
                // Counting what is kept, frame headers too (empty CONTINUATIONs add up).
                if self.raw.len() + h.len() + len > MAX_BLOCK {
                    return Err(AuthorityError::BlockTooLarge(stream));
                }
                self.raw.extend_from_slice(&h);
                self.frame = (kind, flags, stream);
                self.payload.clear();
                if len == 0 {
                    self.end_frame(out)?;
                } else {
                    self.state = State::Collect(len);
                }
            }
            PUSH_PROMISE => return Err(AuthorityError::PushPromise(stream)),
            _ => {
                out.extend_from_slice(&h);
                self.state = if len == 0 {
                    State::Head
                } else {
                    State::Pass(len)
                };
            }
        }
        Ok(())
    }

    /// A HEADERS or CONTINUATION payload is complete.
    fn end_frame(&mut self, out: &mut Vec<u8>) -> Result<(), AuthorityError> {
        self.state = State::Head;
        let (kind, flags, stream) = self.frame;
        let p = std::mem::take(&mut self.payload);
        self.raw.extend_from_slice(&p);
        if kind == HEADERS {
            if stream == 0 {
                return Err(AuthorityError::StreamZero);
            }
            let (mut from, mut to) = (0, p.len());
            if flags & PADDED != 0 {
                let pad = usize::from(*p.first().ok_or(AuthorityError::Padding(stream))?);
                from = 1;
                to = to
                    .checked_sub(pad)
                    .filter(|&t| t >= from)
                    .ok_or(AuthorityError::Padding(stream))?;
            }
            let mut priority = None;
            if flags & PRIORITY != 0 {
                let fields = p.get(from..from + 5).filter(|_| from + 5 <= to);
                let fields = fields.ok_or(AuthorityError::Padding(stream))?;
                let mut five = [0u8; 5];
                five.copy_from_slice(fields);
                priority = Some(five);
                from += 5;
            }
            self.block = Some(Block {
                stream,
                end_stream: flags & END_STREAM != 0,
                priority,
                fragment: p[from..to].to_vec(),
            });
        } else {
            let block = self
                .block
                .as_mut()
                .ok_or(AuthorityError::StrayContinuation(stream))?;
            if block.stream != stream {
                return Err(AuthorityError::Interleaved {
                    kind,
                    stream,
                    open: block.stream,
                });
            }
            block.fragment.extend_from_slice(&p);
        }
        // Keep the payload's allocation for the next frame.
        self.payload = p;
        self.payload.clear();
        if flags & END_HEADERS != 0 {
            if let Some(block) = self.block.take() {
                self.finish(block, out)?;
            }
        }
        Ok(())
    }

    /// A header block is complete: decode, repair, re-encode, write out.
    fn finish(&mut self, block: Block, out: &mut Vec<u8>) -> Result<(), AuthorityError> {
        let stream = block.stream;
        let mut fields = self
            .decoder
            .decode(&block.fragment)
            .map_err(|source| AuthorityError::Hpack { stream, source })?;
        let repair = fields
            .iter()
            .any(|f| f.name == b":authority" && !acceptable(&f.value));
        if !self.rewriting && !repair {
            // Nothing repaired yet on this connection: the frames as they came.
            out.extend_from_slice(&self.raw);
            self.raw.clear();
            return Ok(());
        }
        self.rewriting = true;
        self.raw.clear();
        let mut encoded = Vec::with_capacity(block.fragment.len() * 2);
        for f in &mut fields {
            if f.name == b":authority" && !acceptable(&f.value) {
                if self.replaced == 0 {
                    // Once per connection: a client sends the same authority every time.
                    tracing::debug!(
                        stream,
                        authority = %String::from_utf8_lossy(&f.value),
                        "replacing the :authority the HTTP/2 server would refuse with localhost"
                    );
                }
                f.value = REPLACEMENT.to_vec();
                self.replaced += 1;
            }
            hpack::encode(f, &mut encoded);
        }
        write_block(
            out,
            stream,
            block.end_stream,
            block.priority.as_ref(),
            &encoded,
        );
        Ok(())
    }
}

/// Whether the server would take `authority` (the very check it makes).
pub fn acceptable(authority: &[u8]) -> bool {
    http::uri::Authority::try_from(authority).is_ok()
}

/// Write a header block as HEADERS plus CONTINUATIONs, none over [`OUT_FRAME`].
fn write_block(
    out: &mut Vec<u8>,
    stream: u32,
    end_stream: bool,
    priority: Option<&[u8; 5]>,
    block: &[u8],
) {
    let room = OUT_FRAME - priority.map_or(0, |_| 5);
    let (first, mut rest) = block.split_at(block.len().min(room));
    let mut flags = if end_stream { END_STREAM } else { 0 };
    if priority.is_some() {
        flags |= PRIORITY;
    }
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    let len = first.len() + priority.map_or(0, |p| p.len());
    frame_head(out, len, HEADERS, flags, stream);
    if let Some(p) = priority {
        out.extend_from_slice(p);
    }
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, after) = rest.split_at(rest.len().min(OUT_FRAME));
        let flags = if after.is_empty() { END_HEADERS } else { 0 };
        frame_head(out, chunk.len(), CONTINUATION, flags, stream);
        out.extend_from_slice(chunk);
        rest = after;
    }
}

/// Append a frame header (RFC 9113 §4.1).
fn frame_head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
}

#[cfg(test)]
mod tests;
