//! The client against raw HTTP/1.1 servers on real sockets: framing of
//! responses and requests, interim answers, broken bodies and reuse.

use std::cell::RefCell;
use std::rc::Rc;

use http::Request;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::proxy::testing::{Then, answer_once};
use crate::tls::io::MaybeTls;

/// Keeps the connection a response gave back.
#[derive(Clone, Default)]
struct Kept(Rc<RefCell<Option<Connection>>>);

impl Reuse for Kept {
    fn reuse(self, connection: Connection) {
        *self.0.borrow_mut() = Some(connection);
    }
}

/// What a test says of a [`SendFailure`] (its body is no `Debug`).
fn why(failure: &SendFailure) -> String {
    match failure {
        SendFailure::Unsent(_) => "nothing was written".to_owned(),
        SendFailure::Reset(error) => format!("reset: {error}"),
        SendFailure::Protocol(reason) => format!("protocol: {reason}"),
        SendFailure::Body => "the request body failed".to_owned(),
    }
}

/// A server answering each request it reads (up to the end of its head,
/// plus `body` bytes) with the next of `answers`, then closing when they
/// run out. Returns its address and what it read, request by request.
async fn server(answers: Vec<&'static str>) -> (std::net::SocketAddr, Rc<RefCell<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let address = listener.local_addr().expect("an address");
    let seen = Rc::new(RefCell::new(Vec::new()));
    let log = seen.clone();
    tokio::task::spawn_local(async move {
        let (mut stream, _) = listener.accept().await.expect("a connection");
        let mut buf = Vec::new();
        for answer in answers {
            let request = loop {
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .map_or(0, |n| n.trim().parse::<usize>().expect("a length"));
                    if buf.len() >= end + 4 + length {
                        let whole: Vec<u8> = buf.drain(..end + 4 + length).collect();
                        break String::from_utf8_lossy(&whole).into_owned();
                    }
                }
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.expect("a read");
                assert!(n > 0, "the client closed early");
                buf.extend_from_slice(&chunk[..n]);
            };
            log.borrow_mut().push(request);
            stream.write_all(answer.as_bytes()).await.expect("a write");
        }
    });
    (address, seen)
}

async fn connect(address: std::net::SocketAddr) -> Connection {
    let stream = TcpStream::connect(address).await.expect("connects");
    Connection::new(MaybeTls::Plain(stream), None)
}

/// Looks at `connection` until it is unusable; panics with `never` if it
/// stays usable for 30 s.
async fn until_unusable(connection: &mut Connection, never: &str) {
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while connection.is_usable(std::task::Waker::noop()) {
        assert!(std::time::Instant::now() < give_up, "{never}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// [`super::send`] with a whole request, as these tests build them.
async fn send<R: Reuse>(
    connection: Connection,
    request: Request<UpstreamBody>,
    reuse: R,
) -> Result<Response<Box<ResponseBody<R>>>, SendFailure> {
    let (mut parts, body) = request.into_parts();
    super::send(connection, &mut parts, body, reuse).await
}

fn get(path: &str) -> Request<UpstreamBody> {
    Request::get(path)
        .header("host", "upstream")
        .body(UpstreamBody::Full(None))
        .expect("a request")
}

async fn read_all<R: Reuse + Unpin>(
    body: Box<ResponseBody<R>>,
) -> Result<(Bytes, Option<HeaderMap>), io::Error> {
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    Ok((collected.to_bytes(), trailers))
}

fn local<F: Future>(f: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    tokio::task::LocalSet::new().block_on(&runtime, f)
}

#[test]
fn a_sized_answer_leaves_the_connection_for_the_next_request() {
    local(async {
        let (address, seen) = server(vec![
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello",
            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
        ])
        .await;
        let kept = Kept::default();
        let response = send(connect(address).await, get("/one?q=1"), kept.clone())
            .await
            .unwrap_or_else(|_| panic!("an answer"));
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-a"], "1");
        let (body, _) = read_all(response.into_body()).await.expect("a body");
        assert_eq!(body, "hello");
        let connection = kept.0.borrow_mut().take().expect("given back");
        let response = send(connection, get("/two"), kept.clone())
            .await
            .unwrap_or_else(|_| panic!("an answer"));
        assert_eq!(response.status(), 404);
        assert!(response.body().is_end_stream());
        assert!(
            kept.0.borrow().is_some(),
            "an empty body gives it back at once"
        );
        assert_eq!(
            *seen.borrow(),
            [
                "GET /one?q=1 HTTP/1.1\r\nhost: upstream\r\n\r\n",
                "GET /two HTTP/1.1\r\nhost: upstream\r\n\r\n"
            ]
        );
    });
}

#[test]
fn a_chunked_answer_with_trailers_and_an_interim_one_before_it() {
    local(async {
        let (address, _) = server(vec![
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
             5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\ngrpc-status: 0\r\n\r\n",
        ])
        .await;
        let kept = Kept::default();
        let response = send(connect(address).await, get("/"), kept.clone())
            .await
            .unwrap_or_else(|_| panic!("an answer"));
        assert_eq!(response.status(), 200);
        let (body, trailers) = read_all(response.into_body()).await.expect("a body");
        assert_eq!(body, "hello world");
        assert_eq!(trailers.expect("trailers")["grpc-status"], "0");
        assert!(kept.0.borrow().is_some(), "reusable after the last chunk");
    });
}

#[test]
fn a_body_read_to_the_close_is_whole_but_not_reused() {
    local(async {
        let (address, _) = server(vec!["HTTP/1.1 200 OK\r\n\r\nuntil the end"]).await;
        let kept = Kept::default();
        let response = send(connect(address).await, get("/"), kept.clone())
            .await
            .unwrap_or_else(|_| panic!("an answer"));
        let (body, _) = read_all(response.into_body()).await.expect("a body");
        assert_eq!(body, "until the end");
        assert!(kept.0.borrow().is_none());
    });
}

#[test]
fn broken_bodies_say_how_they_broke() {
    local(async {
        let (address, _) = server(vec![
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        ])
        .await;
        let response = send(connect(address).await, get("/"), Kept::default())
            .await
            .unwrap_or_else(|_| panic!("an answer"));
        let error = read_all(response.into_body()).await.expect_err("malformed");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);

        let (address, _) = server(vec!["HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"]).await;
        let response = send(connect(address).await, get("/"), Kept::default())
            .await
            .unwrap_or_else(|_| panic!("an answer"));
        let error = read_all(response.into_body()).await.expect_err("cut short");
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    });
}

#[test]
fn broken_heads_are_protocol_errors_and_silence_a_reset() {
    local(async {
        for answer in [
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
            "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
            "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            // The connection closed within the head (Envoy's 502 UPE).
            "HTTP/1.1 200 OK\r\ncontent-le",
        ] {
            let (address, _) = server(vec![answer]).await;
            let sent = send(connect(address).await, get("/"), Kept::default()).await;
            assert!(
                matches!(sent, Err(SendFailure::Protocol(_))),
                "{answer:?} is a protocol error"
            );
        }
        let (address, _) = server(vec![""]).await;
        let sent = send(connect(address).await, get("/"), Kept::default()).await;
        assert!(
            matches!(sent, Err(SendFailure::Reset(_))),
            "no answer at all"
        );
        // A reset (RST) within the head is the upstream's protocol error
        // too, as a close is.
        let address = answer_once(b"HTTP/1.1 200 OK\r\ncontent-le", Then::Reset).await;
        let sent = send(connect(address).await, get("/"), Kept::default()).await;
        assert!(
            matches!(sent, Err(SendFailure::Protocol(_))),
            "a reset within the head"
        );
    });
}

#[test]
fn a_request_body_is_sized_and_a_head_answer_has_none() {
    local(async {
        let (address, seen) = server(vec![
            "HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
            "HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n",
        ])
        .await;
        let kept = Kept::default();
        let post = Request::post("/items")
            .body(UpstreamBody::Full(Some(Bytes::from_static(b"hello"))))
            .expect("a request");
        let response = send(connect(address).await, post, kept.clone())
            .await
            .unwrap_or_else(|_| panic!("an answer"));
        assert_eq!(response.status(), 201);
        read_all(response.into_body()).await.expect("a body");
        let head = Request::head("/items")
            .body(UpstreamBody::Full(None))
            .expect("a request");
        let connection = kept.0.borrow_mut().take().expect("given back");
        let response = send(connection, head, kept.clone())
            .await
            .unwrap_or_else(|_| panic!("an answer"));
        assert!(
            response.body().is_end_stream(),
            "HEAD: no body, whatever its length says"
        );
        assert_eq!(
            *seen.borrow(),
            [
                "POST /items HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello",
                "HEAD /items HTTP/1.1\r\n\r\n"
            ]
        );
    });
}

#[test]
fn a_request_body_keeps_going_out_while_its_answer_comes_in() {
    // An echo server answers as soon as it has the head and sends back
    // what it reads: the client must write the body while it reads the
    // answer, or both wait on full socket buffers.
    const LENGTH: usize = 4 << 20;
    local(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let address = listener.local_addr().expect("an address");
        tokio::task::spawn_local(async move {
            let (mut stream, _) = listener.accept().await.expect("a connection");
            let mut buf = Vec::new();
            let end = loop {
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.expect("a read");
                assert!(n > 0, "the client closed early");
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break end + 4;
                }
            };
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {LENGTH}\r\n\r\n");
            stream.write_all(head.as_bytes()).await.expect("a write");
            stream.write_all(&buf[end..]).await.expect("a write");
            let mut echoed = buf.len() - end;
            let mut chunk = vec![0u8; 64 * 1024];
            while echoed < LENGTH {
                let n = stream.read(&mut chunk).await.expect("a read");
                assert!(n > 0, "the client closed early");
                stream.write_all(&chunk[..n]).await.expect("a write");
                echoed += n;
            }
        });
        let sent: Bytes = (0..LENGTH).map(|i| (i % 251) as u8).collect();
        let kept = Kept::default();
        let post = Request::post("/echo")
            .body(UpstreamBody::Full(Some(sent.clone())))
            .expect("a request");
        let response = send(connect(address).await, post, kept.clone())
            .await
            .unwrap_or_else(|_| panic!("an answer"));
        let echo = read_all(response.into_body());
        let (body, _) = tokio::time::timeout(std::time::Duration::from_secs(120), echo)
            .await
            .expect("no deadlock: the body went out while the echo came in")
            .expect("a body");
        assert!(body == sent, "the echo is the body sent");
        assert!(
            kept.0.borrow().is_some(),
            "written whole and answered whole: kept"
        );
    });
}

#[test]
fn an_answer_before_the_request_body_ends_closes_the_connection() {
    local(async {
        // Reads nothing more and holds the connection open.
        let answer = b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 4\r\n\r\nbig!";
        let address = answer_once(answer, Then::Hold).await;
        let kept = Kept::default();
        let post = Request::post("/upload")
            .body(UpstreamBody::Full(Some(Bytes::from(vec![7u8; 16 << 20]))))
            .expect("a request");
        let response = send(connect(address).await, post, kept.clone())
            .await
            .unwrap_or_else(|_| panic!("an answer"));
        assert_eq!(response.status(), 413);
        let (body, _) = read_all(response.into_body()).await.expect("a body");
        assert_eq!(body, "big!");
        assert!(
            kept.0.borrow().is_none(),
            "the upstream waits for the rest of the body: not reusable"
        );
    });
}

#[test]
fn a_connection_the_server_closed_is_not_usable() {
    local(async {
        let (address, _) = server(vec![]).await;
        let mut connection = connect(address).await;
        until_unusable(&mut connection, "the close was never seen").await;
    });
}

#[test]
fn a_byte_sent_unasked_keeps_the_connection_unusable() {
    local(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let address = listener.local_addr().expect("an address");
        let (done, hold) = tokio::sync::oneshot::channel::<()>();
        tokio::task::spawn_local(async move {
            let (mut stream, _) = listener.accept().await.expect("a connection");
            stream.write_all(b"X").await.expect("a write");
            // Open until the test ends: only the byte makes it unusable.
            let _ = hold.await;
        });
        let mut connection = connect(address).await;
        until_unusable(&mut connection, "the byte was never seen").await;
        for _ in 0..3 {
            assert!(
                !connection.is_usable(std::task::Waker::noop()),
                "the byte is remembered, not dropped by the look"
            );
        }
        drop(done);
    });
}

#[test]
fn a_chunked_body_ending_on_a_large_chunk_ends_after_its_data() {
    // A body that knows it has ended as its last frame comes (HTTP/2
    // END_STREAM, a replay) must not have its last chunk written ahead of
    // that frame's data: the upstream would read a different request.
    const LENGTH: usize = 9000;
    local(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let address = listener.local_addr().expect("an address");
        let wire = format!("{LENGTH:X}\r\n").len() + LENGTH + "\r\n0\r\n\r\n".len();
        let read = Rc::new(RefCell::new(Vec::new()));
        let log = read.clone();
        tokio::task::spawn_local(async move {
            let (mut stream, _) = listener.accept().await.expect("a connection");
            let mut buf = Vec::new();
            loop {
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n")
                    && buf.len() >= end + 4 + wire
                {
                    *log.borrow_mut() = buf.split_off(end + 4);
                    break;
                }
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.expect("a read");
                assert!(n > 0, "the client closed early");
                buf.extend_from_slice(&chunk[..n]);
            }
            stream
                .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .expect("a write");
        });
        let sent: Bytes = (0..LENGTH).map(|i| (i % 251) as u8).collect();
        let post = Request::post("/upload")
            .header("transfer-encoding", "chunked")
            .body(UpstreamBody::Full(Some(sent.clone())))
            .expect("a request");
        let kept = Kept::default();
        let response = send(connect(address).await, post, kept.clone())
            .await
            .unwrap_or_else(|_| panic!("an answer"));
        assert_eq!(response.status(), 204);
        let mut expected = format!("{LENGTH:X}\r\n").into_bytes();
        expected.extend_from_slice(&sent);
        expected.extend_from_slice(b"\r\n0\r\n\r\n");
        assert!(
            *read.borrow() == expected,
            "size, data, CRLF, then the last chunk"
        );
        assert!(kept.0.borrow().is_some(), "whole both ways: kept");
    });
}

#[test]
fn trailers_that_frame_route_or_authenticate_are_not_sent() {
    let mut headers = HeaderMap::new();
    headers.insert(
        TRAILER,
        HeaderValue::from_static("x-checksum, content-length, authorization, host"),
    );
    let mut out = Outgoing {
        encoding: Encoding::Chunked,
        sent: 0,
        written: 0,
        data: None,
        crlf_after: false,
        done: false,
        short: false,
        held: false,
        trailers: trailer_names(&headers),
        body: UpstreamBody::Full(None),
    };
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("abc"));
    trailers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    trailers.insert("authorization", HeaderValue::from_static("Bearer x"));
    trailers.insert("host", HeaderValue::from_static("elsewhere"));
    let mut buf = Vec::new();
    out.frame_end(Some(&trailers), &mut buf);
    assert_eq!(
        String::from_utf8_lossy(&buf),
        "0\r\nx-checksum: abc\r\n\r\n"
    );
}

#[test]
fn chunk_sizes_and_lengths_parse_as_rfc_9112_says() {
    assert_eq!(chunk_size(b"1f\r"), Some(31));
    assert_eq!(chunk_size(b"A ; name=value\r"), Some(10));
    assert_eq!(chunk_size(b"0\r"), Some(0));
    assert_eq!(chunk_size(b"5"), None, "a bare LF");
    assert_eq!(chunk_size(b"\r"), None);
    assert_eq!(chunk_size(b"-1\r"), None);
    assert_eq!(chunk_size(b"12345678901234567\r"), None, "past 64 bits");
    assert_eq!(
        chunk_size(b"00000000000000001f\r"),
        Some(31),
        "leading zeros"
    );
    assert_eq!(chunk_size(b"5\r\r"), None, "a bare CR");
    assert_eq!(chunk_size(b"5 \t;x\r"), Some(5), "spaces and tabs");
    assert_eq!(chunk_size(b"5\x0b\r"), None, "no other whitespace");

    let lengths = |values: &[&'static str]| {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(CONTENT_LENGTH, HeaderValue::from_static(v));
        }
        content_length(&map)
    };
    assert_eq!(lengths(&[]), Ok(None));
    assert_eq!(lengths(&["42"]), Ok(Some(42)));
    assert_eq!(lengths(&["42", "42, 42"]), Ok(Some(42)));
    assert_eq!(lengths(&["42", "43"]), Err(()));
    assert_eq!(lengths(&["+4"]), Err(()));
    assert_eq!(lengths(&[""]), Err(()));
}

/// hyper's server parses the next request on a connection into the emptied
/// map of the response it wrote last: an nginx answer's map takes a
/// request of two headers and the six the agent adds without growing.
#[test]
fn an_answers_header_map_has_room_for_the_next_request() {
    let mut read = BytesMut::from(
        "HTTP/1.1 200 OK\r\nserver: nginx\r\ndate: Fri, 04 Dec 2026 02:00:00 GMT\r\n\
         content-type: text/plain\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\nok",
    );
    let Ok(Parsed::Final(head)) = parse_head(&mut read) else {
        panic!("a final head");
    };
    let mut map = head.headers;
    assert_eq!(map.len(), 4, "all but `connection: keep-alive`");
    let capacity = map.capacity();
    map.clear();
    for name in [
        "user-agent",
        "host",
        "x-request-id",
        "x-forwarded-proto",
        "traceparent",
        "x-envoy-peer-metadata",
        "x-envoy-peer-metadata-id",
        "x-envoy-attempt-count",
    ] {
        map.insert(HeaderName::from_static(name), HeaderValue::from_static("1"));
    }
    assert_eq!(map.capacity(), capacity, "the map grew");
}

/// `Connection` fields of one option are read as the head is parsed and
/// left out of the map; any other stays for the hop-by-hop strip to read.
/// Reuse follows them all, as RFC 9112 §9.3 and §9.6 say for each
/// version: `close` wins over `keep-alive` in HTTP/1.0 too.
#[test]
fn connection_options_decide_reuse_whether_taken_or_listed() {
    let cases: [(&str, bool, Option<&str>); 10] = [
        ("HTTP/1.1 200 OK\r\nconnection: keep-alive\r\n", true, None),
        ("HTTP/1.1 200 OK\r\nConnection:  Close \r\n", false, None),
        (
            "HTTP/1.1 200 OK\r\nconnection: keep-alive, x-a\r\n",
            true,
            Some("keep-alive, x-a"),
        ),
        (
            "HTTP/1.1 200 OK\r\nconnection: x-a, close\r\n",
            false,
            Some("x-a, close"),
        ),
        (
            "HTTP/1.1 200 OK\r\nconnection: x-a\r\nconnection: close\r\n",
            false,
            Some("x-a"),
        ),
        ("HTTP/1.0 200 OK\r\n", false, None),
        ("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\n", true, None),
        (
            "HTTP/1.0 200 OK\r\nconnection: x-a, keep-alive\r\n",
            true,
            Some("x-a, keep-alive"),
        ),
        (
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\nconnection: close\r\n",
            false,
            None,
        ),
        (
            "HTTP/1.0 200 OK\r\nconnection: keep-alive, close\r\n",
            false,
            Some("keep-alive, close"),
        ),
    ];
    for (head, reused, left) in cases {
        local(async move {
            let answer: &'static str = format!("{head}content-length: 2\r\n\r\nok").leak();
            let (address, _) = server(vec![answer]).await;
            let kept = Kept::default();
            let response = send(connect(address).await, get("/"), kept.clone())
                .await
                .unwrap_or_else(|failure| panic!("no answer to {head:?}: {}", why(&failure)));
            let listed: Vec<_> = response.headers().get_all(CONNECTION).iter().collect();
            assert_eq!(
                listed.first().map(|v| v.to_str().unwrap()),
                left,
                "{head:?}"
            );
            assert!(listed.len() <= 1, "{head:?}");
            read_all(response.into_body()).await.expect("a body");
            assert_eq!(kept.0.borrow().is_some(), reused, "{head:?}");
        });
    }
}

#[test]
fn a_body_the_agent_holds_is_not_held_for_100_continue() {
    local(async {
        // Reads the whole request before it answers, sending no 100 (as an
        // HTTP/1.0 server reads one that expects it).
        let (address, seen) = server(vec!["HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"]).await;
        // Larger than goes out with the head: written after it.
        let bytes = Bytes::from(vec![7u8; COALESCE + 1]);
        let post = Request::post("/upload")
            .header("host", "upstream")
            .header("expect", "100-continue")
            .header("content-length", bytes.len())
            .body(UpstreamBody::Full(Some(bytes)))
            .expect("a request");
        // A mirror's copy: the client's 100 is not this request's to wait
        // for, so the body goes at once, not after `CONTINUE_WAIT`.
        let started = std::time::Instant::now();
        let response = send(connect(address).await, post, Kept::default())
            .await
            .unwrap_or_else(|_| panic!("an answer"));
        assert_eq!(response.status(), 200);
        let waited = started.elapsed();
        assert!(waited < CONTINUE_WAIT, "held for {waited:?}");
        assert_eq!(seen.borrow().len(), 1);
    });
}
