//! The HTTP/1.1 accept loop. `axum::serve` gives hyper no timer, so a connection that never
//! finishes sending a request (a stalled client, or a slowloris attack holding sockets
//! open a byte at a time) or simply stays idle is kept forever. Here each connection runs
//! with hyper's timer and three deadlines of the same length, `timeout`: the headers of
//! each request must arrive within it of the connection opening or of the previous
//! response, a body must never pause longer than it between two pieces (408, then the
//! connection closes), and a client must not leave an answer unread that long (the
//! connection closes). A body must also keep an average pace once the first deadline
//! has passed (see [`MIN_BODY_RATE`]), so one trickled in a byte at a time ends too.

use std::future::Future;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Sleep;
use tower::ServiceExt;

/// The idle-connection hint's header (hop-by-hop, so `http` has no constant for it).
const KEEP_ALIVE: axum::http::HeaderName = axum::http::HeaderName::from_static("keep-alive");

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting, asks every
/// connection to close after its current request, and returns when all have.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    // Connections watch `stop` (closed when shutdown begins) and hold a receiver of `done`,
    // so the loop knows when the last one has ended.
    let (stop_tx, stop_rx) = watch::channel(());
    let (done_tx, done_rx) = watch::channel(());
    // Tells clients how long an idle connection lives, so pools that read it (Node's
    // undici, behind `fetch` and the Segment client, retires sockets a second early)
    // stop reusing one before the server closes it, instead of racing the close.
    // Static bytes: a clone per response is then a copy, not a reference count.
    let hint: &'static str = Box::leak(format!("timeout={}", timeout.as_secs()).into_boxed_str());
    let keep_alive = axum::http::HeaderValue::from_static(hint);
    let mut shutdown = pin!(shutdown);
    loop {
        let stream = tokio::select! {
            // Shutdown first: a stream of new connections must not hold it off.
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Answers leave at once: with Nagle's algorithm, an answer written
                    // after a `100 Continue` waited for the client's delayed ACK of it
                    // (40 ms). hyper writes each answer whole, so no more packets go.
                    let _ = stream.set_nodelay(true);
                    stream
                }
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
        };
        let keep_alive = keep_alive.clone();
        let service = TowerToHyperService::new(
            router
                .clone()
                .map_request(move |req: axum::http::Request<Incoming>| {
                    req.map(|body| axum::body::Body::new(IdleTimeout::new(body, timeout)))
                })
                .map_response(move |mut resp: axum::response::Response| {
                    resp.headers_mut().insert(KEEP_ALIVE, keep_alive.clone());
                    resp
                }),
        );
        let mut stop = stop_rx.clone();
        let done = done_rx.clone();
        tokio::spawn(async move {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(timeout);
            let mut conn = pin!(
                builder
                    .serve_connection(TokioIo::new(WriteDeadline::new(stream, timeout)), service)
                    .with_upgrades()
            );
            tokio::select! {
                // Errors here are the client's (reset, a deadline passed, malformed
                // input), worth a debug line at most.
                served = conn.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(done);
        });
    }
    drop(listener);
    drop(stop_rx);
    drop(stop_tx);
    drop(done_rx);
    done_tx.closed().await;
}

/// Connection-level errors (the client went away before the accept) are routine; anything
/// else, such as running out of file descriptors, is logged and retried after a pause
/// instead of spinning.
async fn accept_failed(e: &std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Why a request body was cut off, with the connection deadline it broke; the body
/// extractors answer 408 for it.
#[derive(Debug, thiserror::Error)]
pub enum BodyDeadline {
    /// No piece of it arrived for the deadline.
    #[error("the request body stopped arriving")]
    Stalled(Duration),
    /// It kept arriving, but under [`MIN_BODY_RATE`] on average once the deadline passed.
    #[error("the request body arrived too slowly")]
    TooSlow(Duration),
}

/// A clock that runs while an operation waits and stops when it makes progress: the
/// body and write deadlines. It starts only when the operation has to wait, so one that
/// is ready at once (a body that came with its headers, a write the socket takes) costs
/// no timer.
struct Stall {
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Stall {
    fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            sleep: None,
        }
    }

    /// Called after each poll of the operation (`waiting`: it returned `Pending`); true
    /// once it has waited `timeout` without progress. Waiting polls the clock with the
    /// same context, so its expiry wakes the task.
    fn expired(&mut self, cx: &mut Context<'_>, waiting: bool) -> bool {
        if !waiting {
            self.sleep = None;
            return false;
        }
        let timeout = self.timeout;
        self.sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)))
            .as_mut()
            .poll(cx)
            .is_ready()
    }
}

/// The slowest a body may arrive on average, in bytes per second, once the first
/// deadline has passed: a client that sends a byte just often enough to beat the pause
/// deadline would otherwise hold its connection for as long as its body lasts (a
/// 1 MiB body at a byte a second: twelve days). A slow mobile upload, a few KB a
/// second, is far above it.
pub const MIN_BODY_RATE: u64 = 500;

/// A request body that fails with [`BodyDeadline::Stalled`] when no piece of it arrives
/// for the deadline, and with [`BodyDeadline::TooSlow`] when it is still incomplete at
/// `due`.
struct IdleTimeout {
    body: Incoming,
    stall: Stall,
    /// When the body must be complete by what has arrived: the deadline after the
    /// headers, plus a second per [`MIN_BODY_RATE`] bytes received.
    due: tokio::time::Instant,
    /// The clock for `due`, made the first time the body has to wait.
    overall: Option<Pin<Box<Sleep>>>,
}

impl IdleTimeout {
    fn new(body: Incoming, timeout: Duration) -> Self {
        Self {
            body,
            stall: Stall::new(timeout),
            due: tokio::time::Instant::now() + timeout,
            overall: None,
        }
    }

    /// True once the body is waiting past `due`; the clock then wakes the task.
    fn overdue(&mut self, cx: &mut Context<'_>) -> bool {
        let due = self.due;
        let sleep = self
            .overall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        if sleep.deadline() != due {
            sleep.as_mut().reset(due);
        }
        sleep.as_mut().poll(cx).is_ready()
    }
}

impl Body for IdleTimeout {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.due += Duration::from_millis(data.len() as u64 * 1000 / MIN_BODY_RATE);
        }
        if this.stall.expired(cx, polled.is_pending()) {
            let stalled = BodyDeadline::Stalled(this.stall.timeout);
            return Poll::Ready(Some(Err(Box::new(stalled))));
        }
        if polled.is_pending() && this.overdue(cx) {
            let slow = BodyDeadline::TooSlow(this.stall.timeout);
            return Poll::Ready(Some(Err(Box::new(slow))));
        }
        polled.map(|frame| frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection whose writes fail when the client has not taken any of an answer for the
/// deadline (its receive window stays full): a client that never reads would otherwise
/// hold the connection, and the answers queued for it, forever. It also acknowledges a
/// request's first part at once when the rest has yet to come (see `poll_read`).
struct WriteDeadline {
    stream: TcpStream,
    stall: Stall,
    /// The last read ended with the headers of a request that announces a body: a read
    /// that must wait now waits for that body.
    awaiting_body: bool,
}

impl WriteDeadline {
    fn new(stream: TcpStream, timeout: Duration) -> Self {
        Self {
            stream,
            stall: Stall::new(timeout),
            awaiting_body: false,
        }
    }

    /// A write's outcome, or an error once the client has taken nothing for the deadline.
    fn deadline<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if self.stall.expired(cx, polled.is_pending()) {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading",
            )));
        }
        polled
    }
}

impl AsyncRead for WriteDeadline {
    /// When a read must wait for the body of a request whose headers came alone, the
    /// headers are acknowledged at once. The kernel would delay that ACK up to 40 ms, and
    /// a client that writes a request's headers and body apart with Nagle's algorithm on
    /// (RudderStack's Node client) holds the body until the ACK comes: every such request
    /// took 40 ms more (QA). Otherwise nothing is sent: the answer carries the ACK (hyper
    /// also reads between requests, to notice a client hanging up).
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        match polled {
            Poll::Ready(Ok(())) => self.awaiting_body = headers_alone(&buf.filled()[before..]),
            Poll::Pending if self.awaiting_body => {
                self.awaiting_body = false;
                acknowledge_now(&self.stream);
            }
            _ => {}
        }
        polled
    }
}

/// Whether `chunk` (one read) ends with the end of a request's headers, and those headers
/// announce a body (`Content-Length` other than 0, or `Transfer-Encoding`), or began in an
/// earlier read (the chunk holds no request line), where that cannot be told. Most clients
/// send a request in one piece, whose last bytes are its body: they are told apart by the
/// first test alone.
fn headers_alone(chunk: &[u8]) -> bool {
    let Some(head) = chunk.strip_suffix(b"\r\n\r\n") else {
        return false;
    };
    // The last request's headers: after the previous request's end, if the chunk holds one.
    let start = memchr::memmem::rfind(head, b"\r\n\r\n").map_or(0, |i| i + 4);
    let block = &head[start..];
    let request_line = block.split(|&b| b == b'\n').next().is_some_and(|l| {
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        l.ends_with(b" HTTP/1.1") || l.ends_with(b" HTTP/1.0")
    });
    !request_line
        || block.split(|&b| b == b'\n').any(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                return false;
            };
            let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
            name.eq_ignore_ascii_case(b"transfer-encoding")
                || (name.eq_ignore_ascii_case(b"content-length")
                    && value.iter().any(|&d| d != b'0'))
        })
}

/// Sends the ACK the kernel holds back for this connection, if any (`TCP_QUICKACK`).
/// Where that fails or does not exist, the ACK just comes later.
fn acknowledge_now(stream: &TcpStream) {
    #[cfg(target_os = "linux")]
    let _ = socket2::SockRef::from(stream).set_tcp_quickack(true);
    #[cfg(not(target_os = "linux"))]
    let _ = stream;
}

impl AsyncWrite for WriteDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.deadline(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.deadline(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_flush(cx);
        self.deadline(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_shutdown(cx);
        self.deadline(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::headers_alone;

    #[test]
    fn a_body_still_to_come_is_told_from_a_whole_request() {
        let post = b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Length: 42\r\n\r\n";
        assert!(headers_alone(post));
        assert!(headers_alone(
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
        ));
        // The headers with their body, a request without one, a zero length, a part.
        assert!(!headers_alone(
            b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"
        ));
        assert!(!headers_alone(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(!headers_alone(
            b"POST / HTTP/1.1\r\ncontent-length:  0\r\n\r\n"
        ));
        assert!(!headers_alone(b"POST / HTTP/1.1\r\nContent-Len"));
        assert!(!headers_alone(b""));
        // Headers that came in pieces: the last piece cannot tell, so it is acknowledged.
        assert!(headers_alone(b"gth: 12\r\nHost: x\r\n\r\n"));
        // Only the last request of a chunk counts.
        assert!(!headers_alone(
            b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}GET / HTTP/1.1\r\n\r\n"
        ));
        assert!(headers_alone(
            b"GET / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 9\r\n\r\n"
        ));
    }
}
