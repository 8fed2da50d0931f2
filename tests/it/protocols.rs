//! WebSocket and gRPC through the gateway, against real tungstenite and
//! tonic peers. The gRPC messages are declared with prost's derive so the
//! tests need no protoc.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{SinkExt, Stream, StreamExt};
use http::uri::PathAndQuery;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tonic::codegen::Service;
use tonic::{Status, Streaming};
use tonic_prost::ProstCodec;

use crate::support::Gateway;

fn plain_config(upstream: &str, protocol: &str) -> String {
    format!(
        "listeners:\n  - {{ name: plain, address: '127.0.0.1:{{PORT}}', h2c: true }}\nadmin: {{ address: '127.0.0.1:{{ADMIN}}' }}\nupstreams:\n  backend: {{ targets: ['{upstream}'], protocol: {protocol} }}\nroutes:\n  - {{ name: all, upstream: backend }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_gateway() {
    let backend = websocket_echo_backend().await;
    let gateway = Gateway::start(&plain_config(&backend.to_string(), "http1")).await;
    let url = format!("ws://127.0.0.1:{}/ws", gateway.port);
    let (mut ws, response) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(response.status(), 101);
    for i in 0..20 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed, Message::text(format!("hello {i}")));
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 2, 255])
    );
    ws.close(None).await.unwrap();
}

/// A WebSocket backend that echoes text and binary messages.
pub(crate) async fn websocket_echo_backend() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    backend
}

/// A tonic server with the `echo.Echo` service.
pub(crate) async fn grpc_backend() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EchoService)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    backend
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Note {
    #[prost(string, tag = "1")]
    pub(crate) text: String,
}

type NoteStream = Pin<Box<dyn Stream<Item = Result<Note, Status>> + Send>>;
type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// `echo.Echo`: `Say` (unary), `Chat` (bidi: upper-cases every note) and
/// `Fail` (two notes, then an error that travels in the trailers).
#[derive(Clone)]
struct EchoService;

impl tonic::server::NamedService for EchoService {
    const NAME: &'static str = "echo.Echo";
}

struct Say;
impl Service<tonic::Request<Note>> for Say {
    type Response = tonic::Response<Note>;
    type Error = Status;
    type Future = BoxFuture<Self::Response, Status>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, request: tonic::Request<Note>) -> Self::Future {
        let text = format!("said: {}", request.into_inner().text);
        Box::pin(async move { Ok(tonic::Response::new(Note { text })) })
    }
}

struct Chat {
    fail: bool,
}
impl Service<tonic::Request<Streaming<Note>>> for Chat {
    type Response = tonic::Response<NoteStream>;
    type Error = Status;
    type Future = BoxFuture<Self::Response, Status>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, request: tonic::Request<Streaming<Note>>) -> Self::Future {
        let fail = self.fail;
        Box::pin(async move {
            let inbound = request.into_inner();
            let stream: NoteStream = if fail {
                Box::pin(futures_util::stream::iter(vec![
                    Ok(Note { text: "one".into() }),
                    Ok(Note { text: "two".into() }),
                    Err(Status::aborted("stopped on purpose")),
                ]))
            } else {
                Box::pin(inbound.map(|note| {
                    note.map(|n| Note {
                        text: n.text.to_uppercase(),
                    })
                }))
            };
            Ok(tonic::Response::new(stream))
        })
    }
}

impl Service<http::Request<tonic::body::Body>> for EchoService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Note, Note>::default());
            Ok(match request.uri().path() {
                "/echo.Echo/Say" => grpc.unary(Say, request).await,
                "/echo.Echo/Chat" => grpc.streaming(Chat { fail: false }, request).await,
                "/echo.Echo/Fail" => grpc.streaming(Chat { fail: true }, request).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_streaming_and_trailers_through_gateway() {
    let backend = grpc_backend().await;
    let gateway = Gateway::start(&plain_config(&backend.to_string(), "http2")).await;
    let channel =
        tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", gateway.port))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut client = tonic::client::Grpc::new(channel);

    client.ready().await.unwrap();
    let reply = client
        .unary(
            tonic::Request::new(Note { text: "hi".into() }),
            PathAndQuery::from_static("/echo.Echo/Say"),
            ProstCodec::<Note, Note>::default(),
        )
        .await
        .unwrap();
    assert_eq!(reply.into_inner().text, "said: hi");

    client.ready().await.unwrap();
    let notes: Vec<Note> = (0..50)
        .map(|i| Note {
            text: format!("note {i}"),
        })
        .collect();
    let response = client
        .streaming(
            tonic::Request::new(futures_util::stream::iter(notes)),
            PathAndQuery::from_static("/echo.Echo/Chat"),
            ProstCodec::<Note, Note>::default(),
        )
        .await
        .unwrap();
    let mut inbound = response.into_inner();
    let mut received = Vec::new();
    while let Some(note) = inbound.message().await.unwrap() {
        received.push(note.text);
    }
    assert_eq!(received.len(), 50);
    assert_eq!(received[49], "NOTE 49");
    // grpc-status 0 arrived in the trailers, or `message()` would have failed.
    assert!(inbound.trailers().await.unwrap().is_some());

    client.ready().await.unwrap();
    let response = client
        .streaming(
            tonic::Request::new(futures_util::stream::iter(vec![Note { text: "x".into() }])),
            PathAndQuery::from_static("/echo.Echo/Fail"),
            ProstCodec::<Note, Note>::default(),
        )
        .await
        .unwrap();
    let mut inbound = response.into_inner();
    assert_eq!(inbound.message().await.unwrap().unwrap().text, "one");
    assert_eq!(inbound.message().await.unwrap().unwrap().text, "two");
    let status = inbound.message().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Aborted);
    assert_eq!(status.message(), "stopped on purpose");
}
