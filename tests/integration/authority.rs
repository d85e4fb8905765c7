//! gRPC clients that send the Unix socket's path as `:authority`: Python `grpcio` with
//! its default channel options (grpc-core: `tmp%2F…%2Fagent.sock`), the grpc-java and
//! grpc-swift style (`%2Ftmp%2F…`), a raw path, an empty authority and `localhost`, all
//! served on the real agent socket (docs/ARCHITECTURE.md, "The :authority of Unix-socket
//! gRPC clients").
//!
//! Two clients: `grpcio` itself, and a small HTTP/2 client written on a raw socket in the
//! test script, which sends exactly the header block it is told to (any authority,
//! padding, CONTINUATION), so the fix is shown to work for any client, not one library.

use std::time::Duration;

use leash_tests::{python, Cluster};

use crate::{basic, claims, API_AUD};

/// Calls `/leash.v1.Agent/WhoAmI` and `/leash.v1.Agent/Fetch` (credential argv[3]) on the
/// socket argv[1], twice each on one connection (the second requests use the client's
/// HPACK dynamic table), with `grpcio` (argv[2] = default | localhost | java) or the raw
/// client (argv[2] = raw:<variant>). Prints one JSON line per call: the response message
/// decoded as protobuf fields, or the error.
const SCRIPT: &str = r#"
import json, socket, sys

sock, mode, cred = sys.argv[1], sys.argv[2], sys.argv[3]

def fields(msg):
    """Top-level protobuf fields: number -> list of strings or ints."""
    out, i = {}, 0
    def varint():
        nonlocal i
        v, s = 0, 0
        while True:
            b = msg[i]; i += 1
            v |= (b & 0x7f) << s; s += 7
            if b < 0x80:
                return v
    while i < len(msg):
        key = varint(); num, wt = key >> 3, key & 7
        if wt == 0:
            val = varint()
        elif wt == 2:
            n = varint(); val = msg[i:i + n].decode('utf-8', 'replace'); i += n
        else:
            raise ValueError('wire type %d' % wt)
        out.setdefault(str(num), []).append(val)
    return out

name = cred.encode()
requests = [('WhoAmI', b''), ('Fetch', b'\x0a' + bytes([len(name)]) + name)] * 2

def with_grpcio():
    import grpc
    opts = {
        'default': [],
        'localhost': [('grpc.default_authority', 'localhost')],
        'java': [('grpc.default_authority', '%2F' + sock.lstrip('/').replace('/', '%2F'))],
    }[mode]
    ch = grpc.insecure_channel('unix:' + sock, options=opts)
    for method, req in requests:
        f = ch.unary_unary('/leash.v1.Agent/' + method)
        try:
            print(json.dumps({'ok': fields(f(req, timeout=20))}))
        except grpc.RpcError as e:
            print(json.dumps({'error': '%s %s' % (e.code().name, e.details())}))
    ch.close()

def hpack_int(flags, prefix, v):
    m = (1 << prefix) - 1
    if v < m:
        return bytes([flags | v])
    out = [flags | m]; v -= m
    while v >= 0x80:
        out.append((v & 0x7f) | 0x80); v >>= 7
    return bytes(out + [v])

def literal(n, v, flags=0x00):
    # A literal with a literal name: flags 0x00 without indexing, 0x40 with indexing.
    return (hpack_int(flags, 4 if flags == 0 else 6, 0) + hpack_int(0, 7, len(n)) + n
            + hpack_int(0, 7, len(v)) + v)

def frame(kind, flags, stream, payload):
    return len(payload).to_bytes(3, 'big') + bytes([kind, flags]) + stream.to_bytes(4, 'big') + payload

def raw(variant):
    authority = {
        'empty': b'',
        'grpc-core': sock.lstrip('/').replace('/', '%2F').encode(),
        'java': ('%2F' + sock.lstrip('/').replace('/', '%2F')).encode(),
        'path': sock.encode(),
        'localhost': b'localhost',
        'continuation': sock.lstrip('/').replace('/', '%2F').encode(),
    }[variant]
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(20)
    s.connect(sock)
    s.sendall(b'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n' + frame(4, 0, 0, b''))
    buf = b''
    def read_frame():
        nonlocal buf
        while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], 'big'):
            d = s.recv(65536)
            if not d:
                raise EOFError('the server closed the connection')
            buf += d
        n = int.from_bytes(buf[:3], 'big')
        f = (buf[3], buf[4], int.from_bytes(buf[5:9], 'big') & 0x7fffffff, buf[9:9 + n])
        buf = buf[9 + n:]
        return f
    for k, (method, req) in enumerate(requests):
        stream = 2 * k + 1
        block = b''.join([
            literal(b':method', b'POST'),
            literal(b':scheme', b'http'),
            literal(b':path', b'/leash.v1.Agent/' + method.encode()),
            # Added to the dynamic table by the first request and referred to by index
            # (62, the newest entry) afterwards, as grpc-core does.
            literal(b':authority', authority, 0x40) if k == 0 else bytes([0x80 | 62]),
            literal(b'content-type', b'application/grpc'),
            literal(b'te', b'trailers'),
        ])
        if variant == 'continuation':
            # HEADERS with padding and priority, then two CONTINUATIONs.
            cut = len(block) // 3
            head = bytes([4]) + (0).to_bytes(4, 'big') + bytes([15]) + block[:cut] + b'\0' * 4
            out = frame(1, 0x08 | 0x20, stream, head)
            out += frame(9, 0, stream, block[cut:2 * cut])
            out += frame(9, 0x4, stream, block[2 * cut:])
        else:
            out = frame(1, 0x4, stream, block)
        msg = b'\0' + len(req).to_bytes(4, 'big') + req
        s.sendall(out + frame(0, 0x1, stream, msg))
        result = None
        while result is None:
            kind, flags, sid, payload = read_frame()
            if kind == 4 and not flags & 1:
                s.sendall(frame(4, 1, 0, b''))
            elif kind == 6 and not flags & 1:
                s.sendall(frame(6, 1, 0, payload))
            elif kind == 3 and sid == stream:
                result = {'error': 'RST_STREAM %d' % int.from_bytes(payload, 'big')}
            elif kind == 7:
                result = {'error': 'GOAWAY %d' % int.from_bytes(payload[4:8], 'big')}
            elif kind == 0 and sid == stream and len(payload) >= 5:
                result = {'ok': fields(payload[5:])}
            elif kind == 1 and sid == stream and flags & 1:
                result = {'error': 'trailers only (a gRPC error)'}
        print(json.dumps(result))
    s.close()

if mode.startswith('raw:'):
    raw(mode[4:])
else:
    with_grpcio()
"#;

/// Run the script against the first agent; one JSON value per call.
fn calls(c: &Cluster, mode: &str) -> Vec<serde_json::Value> {
    let sock = c.agent(0).socket.to_str().expect("utf-8 socket path");
    let out = python::run_script(SCRIPT, &[sock, mode, "api"], &[], Duration::from_secs(60));
    assert_eq!(out.code, 0, "the client script failed ({mode})\n{out}");
    let lines: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}\n{out}")))
        .collect();
    assert_eq!(lines.len(), 4, "four calls ({mode})\n{out}");
    lines
}

/// Every call was answered: WhoAmI lists the workload, Fetch returns a token for it
/// that carries the credential's audience. Returns the tokens.
#[track_caller]
fn assert_served(c: &Cluster, mode: &str, answers: &[serde_json::Value]) -> Vec<String> {
    let mut tokens = Vec::new();
    for (k, a) in answers.iter().enumerate() {
        let ok = a
            .get("ok")
            .unwrap_or_else(|| panic!("{mode}: call {k} failed: {a}\n{}", c.logs_dump()));
        if k % 2 == 0 {
            // WhoAmIResponse: workloads = 2.
            assert_eq!(ok["2"], serde_json::json!(["ci/job"]), "{mode}: {ok}");
        } else {
            // FetchResponse: token = 1, workload = 4.
            assert_eq!(ok["4"], serde_json::json!(["ci/job"]), "{mode}: {ok}");
            let token = ok["1"][0].as_str().expect("a token").to_string();
            c.remember_secret(&token);
            assert_eq!(claims(&token)["aud"], API_AUD, "{mode}");
            tokens.push(token);
        }
    }
    tokens
}

#[test]
fn grpcio_with_default_options_is_served() {
    let c = Cluster::start();
    basic(&c);
    let tokens = assert_served(&c, "default", &calls(&c, "default"));
    // The token is the real thing: the same lease `leash get` sees, and it verifies.
    let fetched = c.get("api", &[]);
    assert!(fetched.cached, "the agent had it cached from the gRPC call");
    assert_eq!(tokens[0], fetched.token);
    assert_eq!(tokens[1], fetched.token, "the second Fetch is a cache hit");
    // grpc-java / grpc-swift style, and a client that already sends `localhost`.
    assert_served(&c, "java", &calls(&c, "java"));
    assert_served(&c, "localhost", &calls(&c, "localhost"));
    c.assert_no_secret_leaked();
}

#[test]
fn any_client_is_served_whatever_authority_it_sends() {
    let c = Cluster::start();
    basic(&c);
    for variant in [
        "grpc-core",
        "java",
        "path",
        "empty",
        "localhost",
        "continuation",
    ] {
        let mode = format!("raw:{variant}");
        assert_served(&c, &mode, &calls(&c, &mode));
    }
    c.assert_no_secret_leaked();
}
