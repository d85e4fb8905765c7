//! The `:authority` repair on hand-made client input: what the server reads instead.

use super::*;
use crate::server::hpack::tests::huffman_encode;
use crate::server::hpack::Field;

/// How a test client writes a field.
#[derive(Clone, Copy)]
enum Rep {
    /// Literal with incremental indexing, raw strings.
    Indexed,
    /// Literal with incremental indexing, Huffman-coded strings.
    IndexedHuffman,
    /// Literal without indexing, raw strings.
    Plain,
    /// An index into the tables.
    Ref(usize),
}

fn int(out: &mut Vec<u8>, flags: u8, prefix: u8, mut v: usize) {
    let m = (1usize << prefix) - 1;
    if v < m {
        out.push(flags | v as u8);
        return;
    }
    out.push(flags | m as u8);
    v -= m;
    while v >= 0x80 {
        out.push((v & 0x7f) as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn string(out: &mut Vec<u8>, s: &[u8], huffman: bool) {
    if huffman {
        let h = huffman_encode(s);
        int(out, 0x80, 7, h.len());
        out.extend(h);
    } else {
        int(out, 0, 7, s.len());
        out.extend_from_slice(s);
    }
}

/// A header block as a client's encoder would write it.
fn block(fields: &[(&str, &str, Rep)]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(n, v, rep) in fields {
        match rep {
            Rep::Ref(i) => int(&mut out, 0x80, 7, i),
            Rep::Indexed | Rep::IndexedHuffman | Rep::Plain => {
                let huffman = matches!(rep, Rep::IndexedHuffman);
                out.push(if matches!(rep, Rep::Plain) {
                    0x00
                } else {
                    0x40
                });
                string(&mut out, n.as_bytes(), huffman);
                string(&mut out, v.as_bytes(), huffman);
            }
        }
    }
    out
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame_head(&mut out, payload.len(), kind, flags, stream);
    out.extend_from_slice(payload);
    out
}

/// The preface and an empty SETTINGS, as every client opens.
fn opening() -> Vec<u8> {
    let mut v = PREFACE.to_vec();
    v.extend(frame(0x4, 0, 0, &[]));
    v
}

fn request(stream: u32, fields: &[(&str, &str, Rep)]) -> Vec<u8> {
    frame(HEADERS, END_HEADERS, stream, &block(fields))
}

type Frame = (u8, u8, u32, Vec<u8>);

/// The frames the server reads, after the preface.
fn frames(out: &[u8]) -> Vec<Frame> {
    assert_eq!(&out[..PREFACE.len()], PREFACE, "the preface is passed on");
    let mut rest = &out[PREFACE.len()..];
    let mut v = Vec::new();
    while !rest.is_empty() {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
        v.push((rest[3], rest[4], stream, rest[9..9 + len].to_vec()));
        rest = &rest[9 + len..];
    }
    v
}

/// A header block as the server sees it: stream, flags of its HEADERS, fields.
type Seen = (u32, u8, Vec<(String, String)>);

/// What the server decodes: each header block as (stream, flags of its HEADERS, fields),
/// with a decoder of its own.
fn server_view(out: &[u8]) -> Vec<Seen> {
    server_decode(out).0
}

/// [`server_view`], and how many entries the server's dynamic table holds at the end.
fn server_decode(out: &[u8]) -> (Vec<Seen>, usize) {
    let mut d = hpack::Decoder::new(SERVER_HEADER_TABLE_SIZE, MAX_LIST);
    let mut blocks = Vec::new();
    let mut open: Option<(u32, u8, Vec<u8>)> = None;
    for (kind, flags, stream, payload) in frames(out) {
        assert!(
            payload.len() <= OUT_FRAME,
            "no frame over the least max frame size"
        );
        let frag = match kind {
            HEADERS => {
                assert!(open.is_none());
                assert_eq!(flags & PADDED, 0, "padding is dropped");
                let skip = if flags & PRIORITY != 0 { 5 } else { 0 };
                open = Some((stream, flags, Vec::new()));
                payload[skip..].to_vec()
            }
            CONTINUATION => {
                assert_eq!(open.as_ref().map(|o| o.0), Some(stream));
                payload
            }
            _ => {
                assert!(open.is_none(), "a frame inside a header block");
                continue;
            }
        };
        let o = open.as_mut().expect("open block");
        o.2.extend(frag);
        if flags & END_HEADERS != 0 {
            let (s, f, b) = open.take().expect("open block");
            let fields = d.decode(&b).expect("the server can decode it");
            let named = fields
                .iter()
                .map(|Field { name, value, .. }| {
                    (
                        String::from_utf8_lossy(name).into_owned(),
                        String::from_utf8_lossy(value).into_owned(),
                    )
                })
                .collect();
            blocks.push((s, f, named));
        }
    }
    assert!(open.is_none(), "an unfinished header block");
    (blocks, d.table_len())
}

fn run(input: &[u8]) -> Result<(Vec<u8>, AuthorityFix), AuthorityError> {
    let mut fix = AuthorityFix::new();
    let mut out = Vec::new();
    fix.feed(input, &mut out)?;
    Ok((out, fix))
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

const GRPC_CORE: &str = "tmp%2Fleash%2Fagent.sock";

fn grpc_request(authority: &str, rep: Rep) -> Vec<(&str, &str, Rep)> {
    vec![
        (":method", "POST", Rep::Plain),
        (":scheme", "http", Rep::Plain),
        (":path", "/leash.v1.Agent/WhoAmI", Rep::Plain),
        (":authority", authority, rep),
        ("content-type", "application/grpc", Rep::Plain),
    ]
}

fn expect(authority: &str) -> Vec<(String, String)> {
    pairs(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/leash.v1.Agent/WhoAmI"),
        (":authority", authority),
        ("content-type", "application/grpc"),
    ])
}

#[test]
fn an_authority_the_server_takes_is_left_alone() {
    for a in [
        "localhost",
        "example.com:8080",
        "127.0.0.1:50051",
        "[::1]:1",
        "u%20@h",
    ] {
        assert!(acceptable(a.as_bytes()), "{a}");
        let mut input = opening();
        input.extend(request(1, &grpc_request(a, Rep::Indexed)));
        let (out, fix) = run(&input).expect("passes");
        assert_eq!(fix.replaced(), 0);
        assert_eq!(out, input, "passed on as it came");
        assert_eq!(server_view(&out), vec![(1, END_HEADERS, expect(a))]);
    }
}

#[test]
fn the_authority_of_unix_socket_clients_becomes_localhost() {
    // grpc-core, grpc-java/swift, a raw path, empty, and one only the port makes bad.
    for a in [
        GRPC_CORE,
        "%2Ftmp%2Fagent.sock",
        "/run/leash/agent.sock",
        "",
        "unix:%2Ftmp%2Fa.sock",
    ] {
        assert!(!acceptable(a.as_bytes()), "{a}");
        for rep in [Rep::Indexed, Rep::IndexedHuffman, Rep::Plain] {
            let mut input = opening();
            input.extend(request(3, &grpc_request(a, rep)));
            let (out, fix) = run(&input).expect("passes");
            assert_eq!(fix.replaced(), 1, "{a}");
            assert_eq!(
                server_view(&out),
                vec![(3, END_HEADERS, expect("localhost"))]
            );
        }
    }
}

#[test]
fn references_to_the_clients_dynamic_table_follow_it_across_requests() {
    let mut input = opening();
    // The first request adds the authority (62 after it), then a custom header (62; the
    // authority moves to 63); the next requests refer to both by index.
    let mut first = grpc_request(GRPC_CORE, Rep::IndexedHuffman);
    first.push(("x-trace", "abc", Rep::Indexed));
    input.extend(request(1, &first));
    input.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0"));
    for stream in [3, 5] {
        let mut next = grpc_request("", Rep::Ref(63));
        next.push(("x-trace", "", Rep::Ref(62)));
        input.extend(request(stream, &next));
    }
    let (out, fix) = run(&input).expect("passes");
    assert_eq!(fix.replaced(), 3);
    let mut want = expect("localhost");
    want.push(("x-trace".into(), "abc".into()));
    let (view, table) = server_decode(&out);
    assert_eq!(table, 0, "nothing re-encoded enters the server's table");
    assert_eq!(view.len(), 3);
    for (k, (stream, _, fields)) in view.into_iter().enumerate() {
        assert_eq!(stream, [1, 3, 5][k]);
        assert_eq!(fields, want, "request {k}");
    }
    // The DATA frame between them went through untouched.
    let data: Vec<Frame> = frames(&out).into_iter().filter(|f| f.0 == 0).collect();
    assert_eq!(data, vec![(0, END_STREAM, 1, b"\0\0\0\0\0".to_vec())]);
}

#[test]
fn padding_priority_and_continuation_are_handled() {
    let b = block(&grpc_request(GRPC_CORE, Rep::IndexedHuffman));
    let (a, rest) = b.split_at(7);
    let (m, z) = rest.split_at(rest.len() / 2);
    let mut head = vec![3u8]; // pad length
    head.extend([0x80, 0, 0, 1, 200]); // priority: exclusive on stream 1, weight 200
    head.extend_from_slice(a);
    head.extend([0, 0, 0]);
    let mut input = opening();
    input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 9, &head));
    input.extend(frame(CONTINUATION, 0, 9, m));
    input.extend(frame(CONTINUATION, 0, 9, &[]));
    input.extend(frame(CONTINUATION, END_HEADERS, 9, z));
    let (out, _) = run(&input).expect("passes");
    let f = frames(&out);
    let h = f.iter().find(|f| f.0 == HEADERS).expect("HEADERS");
    assert_eq!(h.1, PRIORITY | END_STREAM | END_HEADERS);
    assert_eq!(&h.3[..5], &[0x80, 0, 0, 1, 200], "priority kept");
    assert_eq!(
        server_view(&out),
        vec![(9, PRIORITY | END_STREAM | END_HEADERS, expect("localhost"))]
    );
}

#[test]
fn a_large_block_is_written_in_frames_the_server_accepts() {
    let big = "v".repeat(40_000);
    let mut fields = grpc_request(GRPC_CORE, Rep::Plain);
    fields.push(("x-big", &big, Rep::Plain));
    let b = block(&fields);
    let mut input = opening();
    // Sent as 3 frames of up to 16 KiB.
    let mut chunks = b.chunks(16_000).peekable();
    let mut kind = HEADERS;
    while let Some(c) = chunks.next() {
        let flags = if chunks.peek().is_none() {
            END_HEADERS
        } else {
            0
        };
        input.extend(frame(kind, flags, 1, c));
        kind = CONTINUATION;
    }
    let (out, _) = run(&input).expect("passes");
    let kinds: Vec<u8> = frames(&out).iter().map(|f| f.0).collect();
    assert_eq!(kinds, vec![0x4, HEADERS, CONTINUATION, CONTINUATION]);
    let view = server_view(&out);
    assert_eq!(view[0].2[3], (":authority".into(), "localhost".into()));
    assert_eq!(view[0].2[5].1.len(), 40_000);
}

#[test]
fn other_frames_pass_byte_for_byte_and_input_may_come_in_any_pieces() {
    let mut input = opening();
    input.extend(frame(0x4, 0, 0, &[0, 4, 0, 1, 0, 0])); // SETTINGS
    input.extend(frame(0x8, 0, 0, &[0, 0, 1, 0])); // WINDOW_UPDATE
    input.extend(frame(0x6, 0, 0, &[7; 8])); // PING
    input.extend(request(1, &grpc_request("localhost", Rep::Plain)));
    input.extend(frame(0x0, 0x8 | END_STREAM, 1, &[2, 9, 9, 0, 0])); // padded DATA
    input.extend(frame(0x3, 0, 1, &[0, 0, 0, 8])); // RST_STREAM
    input.extend(frame(0xee, 0xff, 7, b"an unknown frame type")); // ignored by servers
    input.extend(frame(0x7, 0, 0, &[0; 8])); // GOAWAY
    let (whole, _) = run(&input).expect("passes");
    assert_eq!(whole, input, "nothing to repair: every byte as it came");
    // Byte by byte, and in odd pieces: the same output.
    for size in [1, 2, 5, 9, 10, 17, 4096] {
        let mut fix = AuthorityFix::new();
        let mut out = Vec::new();
        for piece in input.chunks(size) {
            fix.feed(piece, &mut out).expect("passes");
        }
        assert_eq!(out, whole, "pieces of {size}");
    }
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    let with = |more: Vec<u8>| {
        let mut v = opening();
        v.extend(more);
        run(&v).map(|_| ())
    };
    assert_eq!(
        run(b"GET / HTTP/1.1\r\n").map(|_| ()),
        Err(AuthorityError::Preface)
    );
    let ok = block(&grpc_request(GRPC_CORE, Rep::Plain));
    assert_eq!(
        with(frame(HEADERS, END_HEADERS, 0, &ok)),
        Err(AuthorityError::StreamZero)
    );
    // Padding as long as the frame.
    assert_eq!(
        with(frame(HEADERS, END_HEADERS | PADDED, 1, &[3, 0, 0])),
        Err(AuthorityError::Padding(1))
    );
    assert_eq!(
        with(frame(HEADERS, END_HEADERS | PADDED, 1, &[])),
        Err(AuthorityError::Padding(1))
    );
    // Priority fields cut short.
    assert_eq!(
        with(frame(HEADERS, END_HEADERS | PRIORITY, 1, &[0, 0, 0])),
        Err(AuthorityError::Padding(1))
    );
    // Another frame inside a header block; a CONTINUATION of another stream; one with
    // no block open.
    let mut v = frame(HEADERS, 0, 1, &ok);
    v.extend(frame(0x0, 0, 1, b"x"));
    assert_eq!(
        with(v),
        Err(AuthorityError::Interleaved {
            kind: 0,
            stream: 1,
            open: 1
        })
    );
    let mut v = frame(HEADERS, 0, 1, &ok);
    v.extend(frame(CONTINUATION, END_HEADERS, 3, &[]));
    assert_eq!(
        with(v),
        Err(AuthorityError::Interleaved {
            kind: CONTINUATION,
            stream: 3,
            open: 1
        })
    );
    assert_eq!(
        with(frame(CONTINUATION, END_HEADERS, 1, &ok)),
        Err(AuthorityError::StrayContinuation(1))
    );
    assert_eq!(
        with(frame(PUSH_PROMISE, END_HEADERS, 1, &[0, 0, 0, 2])),
        Err(AuthorityError::PushPromise(1))
    );
    // A header block over the limit, across frames.
    let mut v = frame(HEADERS, 0, 1, &vec![0; 16_384]);
    for _ in 0..3 {
        v.extend(frame(CONTINUATION, 0, 1, &vec![0; 16_384]));
    }
    v.extend(frame(CONTINUATION, 0, 1, &[0]));
    assert_eq!(with(v), Err(AuthorityError::BlockTooLarge(1)));
    // Bad HPACK: an index past both tables; a table size over what the server allows.
    assert!(matches!(
        with(frame(HEADERS, END_HEADERS, 1, &[0xbe])),
        Err(AuthorityError::Hpack {
            stream: 1,
            source: HpackError::BadIndex(62)
        })
    ));
    assert!(matches!(
        with(frame(HEADERS, END_HEADERS, 1, &[0x3f, 0xe2, 0x1f])),
        Err(AuthorityError::Hpack {
            source: HpackError::TableSize { .. },
            ..
        })
    ));
}

#[test]
fn arbitrary_frames_never_panic() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..3_000 {
        let mut input = opening();
        for _ in 0..(next() % 6) {
            let kind =
                [HEADERS, CONTINUATION, 0x0, 0x4, (next() % 16) as u8][(next() % 5) as usize];
            let len = (next() % 40) as usize;
            let payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            input.extend(frame(kind, next() as u8, (next() % 4) as u32, &payload));
        }
        let mut fix = AuthorityFix::new();
        let mut out = Vec::new();
        for piece in input.chunks(1 + (next() % 50) as usize) {
            if fix.feed(piece, &mut out).is_err() {
                break;
            }
        }
    }
}

#[test]
fn after_the_first_repair_every_block_is_reencoded() {
    let mut input = opening();
    // 1: a valid authority, indexed (the server's table gets the client's entries).
    input.extend(request(1, &grpc_request("localhost", Rep::Indexed)));
    let passed = input.len();
    // 2: the socket path, and a new entry in the client's table only.
    let mut second = grpc_request(GRPC_CORE, Rep::Indexed);
    second.push(("x-trace", "abc", Rep::Indexed));
    input.extend(request(3, &second));
    // 3: refers to that entry (62) by index: passed on as it came, the server would read
    // index 62 as another entry.
    let third = vec![
        (":method", "", Rep::Ref(3)),
        (":scheme", "", Rep::Ref(6)),
        (":path", "/leash.v1.Agent/WhoAmI", Rep::Plain),
        ("x-trace", "", Rep::Ref(62)),
    ];
    input.extend(request(5, &third));
    let (out, fix) = run(&input).expect("passes");
    assert_eq!(fix.replaced(), 1);
    assert_eq!(
        &out[..passed],
        &input[..passed],
        "the first block as it came"
    );
    let mut want2 = expect("localhost");
    want2.push(("x-trace".into(), "abc".into()));
    let want3 = pairs(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/leash.v1.Agent/WhoAmI"),
        ("x-trace", "abc"),
    ]);
    let (view, table) = server_decode(&out);
    assert_eq!(
        view,
        vec![
            (1, END_HEADERS, expect("localhost")),
            (3, END_HEADERS, want2),
            (5, END_HEADERS, want3),
        ]
    );
    assert_eq!(
        table, 1,
        "the server's table holds the first block's entry only"
    );
}

#[test]
fn a_flood_of_empty_continuations_is_bounded() {
    let mut input = opening();
    input.extend(frame(HEADERS, 0, 1, &[0x82]));
    for _ in 0..(MAX_BLOCK / 9) {
        input.extend(frame(CONTINUATION, 0, 1, &[]));
    }
    assert_eq!(
        run(&input).map(|_| ()),
        Err(AuthorityError::BlockTooLarge(1))
    );
}
